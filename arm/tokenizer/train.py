"""The train_tokenizer stage: curated train split -> models/tokenizer/ + metrics + loss curves.

The loop runs on `accelerate`: `tokenizer.train.precision` (bf16 autocast over fp32 master
weights, or fp32), data parallelism over the processes torchrun starts (each takes its slice
of the global batch; gradients are averaged by DDP), and `save_state`/`load_state` for the
model, optimizer, scheduler and every rank's RNG, with the step, loss curve and config
fingerprint saved alongside (arm.train.accel: tag dirs under tokenizer.checkpoint_dir).

Exact resume: the data order is a pure function of (seed, step) (one permutation per epoch, one
text choice per step), so the data position is the step itself and a resumed run sees the same
batches in the same order as an uninterrupted one.

Aspect buckets (tokenizer.aspect): with more than one grid, every batch holds the images of one
bucket, each framed at its bucket's pixel size (arm.tokenizer.data.bucket_parts); the bucket of
a step is drawn with probability proportional to its image count (BucketOrder), still a pure
function of (seed, step). With one grid the order and every result are what they were.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from arm.curves import CurveLog
from arm.io import atomic_write_json
from arm.tokenizer import losses as L
from arm.tokenizer.buckets import Buckets
from arm.tokenizer.data import IGNORE, ImageTextSet, Part, bucket_parts, scene_cell_states, scene_class_count, step_loader
from arm.tokenizer.model import VisualTokenizer
from arm.tokenizer.teachers import Teacher, build_teacher
from arm.tokenizer.text_encoder import TextEncoder
from arm.tokenizer.vocab import PAD, CaptionVocab
from arm.train import accel

log = logging.getLogger(__name__)

LOSS_NAMES = ("l1", "l2", "log_mse", "perceptual", "distill", "contrastive", "caption", "scene", "usage", "bound")


# ----------------------------------------------------------------------------- helpers


def fingerprint(cfg, train: ImageTextSet) -> str:
    """What a checkpoint must match to be resumed: training-relevant config, seed, data."""
    t = cfg.tokenizer.model_dump(mode="json")
    for k in ("eval", "tokens", "output", "metrics", "plots", "checkpoint_dir", "text_cache", "device"):
        t.pop(k, None)
    # resources, not results: a resumed run may use other ones
    for k in ("checkpoint_every", "log_every", "threads", "cache_mb", "workers", "teacher_chunk",
              "teacher_checkpointing"):
        t["train"].pop(k, None)
    h = hashlib.sha256(json.dumps({"tok": t, "seed": cfg.seed}, sort_keys=True).encode())
    for key, texts in zip(train.keys, train.texts):
        h.update(key.encode())
        h.update("\x1f".join(texts).encode())
    return h.hexdigest()[:20]


class BatchOrder:
    """The global batch of every step, a pure function of (seed, step): epochs are seeded
    permutations cut into full batches; during the scene warm-up (when the scene images fill a
    batch) the batches come from the scene images alone.

    With `groups` (each image's storage row group) and `window` > 0 an epoch is block-shuffled:
    the row groups in a seeded order, the images shuffled within each run of `window` groups,
    so a streamed epoch reads each row group about once (a uniform permutation would read one
    per image). The permutation of the current epoch is kept, not redrawn every step.
    """

    def __init__(self, n: int, batch: int, seed: int, scene_rows: torch.Tensor | None = None, warmup: int = 0,
                 groups: torch.Tensor | None = None, window: int = 0):
        self.n, self.batch, self.seed = n, batch, seed
        self.scene_rows = scene_rows if scene_rows is not None else torch.empty(0, dtype=torch.long)
        self.warmup = warmup
        self.groups = groups if window else None
        self.window = window
        self._kept: dict[tuple[bool, int], torch.Tensor] = {}

    def rows(self, step: int) -> torch.Tensor:
        if step < self.warmup and len(self.scene_rows) >= self.batch:
            return self.scene_rows[self._batch(True, step)]
        return self._batch(False, step)

    def _batch(self, scenes: bool, step: int) -> torch.Tensor:
        n = len(self.scene_rows) if scenes else self.n
        per_epoch = max(1, n // self.batch)
        epoch, pos = divmod(step, per_epoch)
        key = (scenes, epoch)
        if key not in self._kept:
            groups = None if self.groups is None else (self.groups[self.scene_rows] if scenes else self.groups)
            self._kept = {key: self._permutation(n, epoch, groups)}
        return self._kept[key][pos * self.batch : (pos + 1) * self.batch]

    def _permutation(self, n: int, epoch: int, groups: torch.Tensor | None) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        perm = torch.randperm(n, generator=g)
        if groups is None:
            return perm
        uniq, group = torch.unique(groups, return_inverse=True)
        place = torch.empty(len(uniq), dtype=torch.long)
        place[torch.randperm(len(uniq), generator=g)] = torch.arange(len(uniq))
        window = place[group] // self.window
        return perm[torch.argsort(window[perm], stable=True)]


class BucketOrder:
    """The global batch of every step over aspect buckets: (bucket, its rows), a pure function of
    (seed, step). One seeded draw per step picks the bucket, with probability proportional to its
    images (in the scene warm-up: to its scene images, among buckets whose scene images fill a
    batch); the bucket then serves the next batch of its own BatchOrder, which counts the steps
    it was drawn for, so each bucket's epochs visit each of its images once.

    With one bucket nothing is drawn: its BatchOrder is the single-bucket trainer's, step for step.
    """

    def __init__(self, sizes: list[int], batch: int, seed: int, total: int, scene_rows: list[torch.Tensor],
                 warmup: int = 0, groups: list[torch.Tensor | None] | None = None, window: int = 0):
        groups = groups or [None] * len(sizes)
        if len(sizes) == 1:
            self.bucket = torch.zeros(total, dtype=torch.long)
        else:
            g = torch.Generator().manual_seed(seed * 1_000_033 + 11)
            self.bucket = torch.multinomial(torch.tensor(sizes, dtype=torch.float), total, replacement=True, generator=g)
            warm = torch.tensor([len(r) if len(r) >= batch else 0 for r in scene_rows], dtype=torch.float)
            if warmup and warm.sum() > 0:
                self.bucket[:warmup] = torch.multinomial(warm, min(warmup, total), replacement=True, generator=g)
        # the step of each step within its bucket: how often that bucket was drawn before
        self.local = torch.empty(total, dtype=torch.long)
        for b in range(len(sizes)):
            at = (self.bucket == b).nonzero().flatten()
            self.local[at] = torch.arange(len(at))
        # bucket b's permutations are seeded apart from the others' (bucket 0 keeps `seed`)
        self.orders = [BatchOrder(n, batch, seed + 7_919 * b, scene_rows[b], int((self.bucket[:warmup] == b).sum()),
                                  groups[b], window) for b, n in enumerate(sizes)]

    def rows(self, step: int) -> tuple[int, torch.Tensor]:
        b = int(self.bucket[step])
        return b, self.orders[b].rows(int(self.local[step]))


class _RankRows:
    """This process's contiguous slice of a step's global batch (picklable for loader workers)."""

    def __init__(self, order: BucketOrder, lo: int, hi: int):
        self.order, self.lo, self.hi = order, lo, hi

    def __call__(self, step: int) -> tuple[int, torch.Tensor]:
        b, rows = self.order.rows(step)
        return b, rows[self.lo : self.hi]


def lr_schedule(opt: torch.optim.Optimizer, warmup: int, total: int, min_ratio: float, restart: int | None = None):
    """transformers' `cosine_with_min_lr` (linear warmup, cosine to `min_ratio`) up to `restart`
    (default: the end); from `restart` on, a second such cycle from the peak without warmup
    (the decoder fine-tune). get_scheduler has no restart, so the two cycles are composed with
    torch's SequentialLR, which switches at the milestone."""
    from transformers import get_scheduler

    main = total if restart is None or restart >= total else restart

    def cycle(warm: int, steps: int):
        return get_scheduler("cosine_with_min_lr", opt, num_warmup_steps=warm, num_training_steps=steps,
                             scheduler_specific_kwargs={"min_lr_rate": min_ratio})

    first = cycle(warmup, main)
    if main == total:
        return first
    return torch.optim.lr_scheduler.SequentialLR(opt, [first, cycle(0, total - main)], milestones=[main])


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        plain = p.ndim < 2 or name.endswith("pos") or "embed" in name or "logit_" in name
        (no_decay if plain else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


# ----------------------------------------------------------------------------- checkpoints


def _accelerator(tcfg):
    """DDP over the processes (the decoder fine-tune and batches without texts leave parts of the
    model out of a step), autocast for bf16 over fp32 master weights."""
    return accel.build_accelerator(device=tcfg.device, precision=tcfg.train.precision,
                             find_unused_parameters=True)


# ----------------------------------------------------------------------------- the stage


class _Texts:
    """Per training image: ids into a table of unique texts (embeddings + caption tokens)."""

    def __init__(self, train: ImageTextSet, vocab: CaptionVocab, max_length: int):
        self.table = train.all_texts()
        index = {t: i for i, t in enumerate(self.table)}
        self.per_image = [[index[t] for t in ts] for ts in train.texts]
        tok = [vocab.encode(t, max_length) for t in self.table]
        width = max((len(t) for t in tok), default=2)
        self.tokens = torch.full((len(tok), width), PAD, dtype=torch.long)
        for i, t in enumerate(tok):
            self.tokens[i, : len(t)] = torch.tensor(t)
        self.embeddings: torch.Tensor | None = None

    def choose(self, indices: torch.Tensor, seed: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(rows of the batch that have a text, the chosen text id of each)."""
        rng = random.Random(f"{seed}:text:{step}")
        rows, ids = [], []
        for r, i in enumerate(indices.tolist()):
            options = self.per_image[i]
            if options:
                rows.append(r)
                ids.append(options[rng.randrange(len(options))] if len(options) > 1 else options[0])
        return torch.tensor(rows, dtype=torch.long), torch.tensor(ids, dtype=torch.long)


def _text_encoder_with_cache(cfg, device) -> tuple[TextEncoder, Path]:
    enc = TextEncoder(cfg.tokenizer.text_encoder, device=device)
    cache = Path(cfg.tokenizer.text_cache) / f"{enc.fingerprint}.safetensors"
    enc.load_cache(cache)
    return enc, cache


@dataclass
class _Inputs:
    """What the objective reads besides the model and the pixels (never trained, not a module:
    DDP wraps only the tokenizer's parameters)."""

    cfg: Any
    teacher: Teacher | None
    texts: _Texts


class Objective(nn.Module):
    """One step's losses, {name: scalar}: the module accelerate prepares (wraps in DDP across
    processes), so the gradients of every head the step reaches are averaged over the ranks."""

    def __init__(self, model: VisualTokenizer, inputs: _Inputs):
        super().__init__()
        self.model = model
        self.inputs = inputs

    def forward(self, x: torch.Tensor, scene: torch.Tensor | None, text_rows: torch.Tensor, text_ids: torch.Tensor,
                step: int, finetune: bool, teacher_batch: int) -> dict[str, torch.Tensor]:
        """`scene`: the batch's scene-cell targets [b, h*w] (None: no scene loss)."""
        model, inp = self.model, self.inputs
        tcfg, w = inp.cfg.tokenizer, inp.cfg.tokenizer.loss
        # The up-projection also feeds the semantic heads: it stays as they were trained with it.
        model.up.requires_grad_(not finetune)
        grid = model.grid_of(x)
        if finetune:  # codes frozen: only the pixel losses, which reach the decoder alone
            with torch.no_grad():
                q, _ = model.quantize(x)
            out = {"q": q, "recon": model.reconstruct(q, grid)}
        else:
            out = model(x)
        recon = out["recon"]
        parts = L.reconstruction(recon, x, tcfg.patch_size)
        if not finetune:
            feats = out["features"]
            if w.bound > 0:
                parts["bound"] = L.latent_bound(out["z"], tcfg.train.bound_margin)
            if w.usage > 0:
                g = torch.Generator().manual_seed(inp.cfg.seed * 7_919 + step)
                soft = model.soft_levels(out["z"], tcfg.train.usage_temperature)
                parts["usage"] = L.code_usage(soft, tcfg.train.usage_tokens, g)
            # a batch whose scenes all lie on another grid than its tokens has no target
            if scene is not None and bool((scene != IGNORE).any()):
                parts["scene"] = L.scene(model.cell_logits(out["q"]), scene.to(x.device))
        if inp.teacher is not None:
            parts.update(self._teacher_losses(x, recon, feats if not finetune else None, teacher_batch, grid))
        if len(text_rows):
            text_rows, text_ids = text_rows.to(x.device), text_ids.to(x.device)
            sel = feats[text_rows]
            if w.contrastive > 0 and len(text_rows) > 1:
                parts["contrastive"] = L.sigmoid_contrastive(
                    model.align(sel), inp.texts.embeddings[text_ids], text_ids, model.logit_scale, model.logit_bias
                )
            if w.caption > 0:
                tok = inp.texts.tokens[text_ids.cpu()].to(x.device)
                width = int((tok != PAD).sum(1).max())
                tok = tok[:, :width]
                parts["caption"] = L.caption(model.caption_head(sel, tok[:, :-1]), tok[:, 1:])
        return parts

    def _teacher_losses(self, x, recon, feats, tb: int, grid: tuple[int, int]) -> dict[str, torch.Tensor]:
        """Perceptual (through the frozen teacher to the reconstruction) and distillation losses on
        the batch's head (already shuffled: a sample), the teacher run in chunks on the batch's grid."""
        inp = self.inputs
        t, w = inp.cfg.tokenizer, inp.cfg.tokenizer.loss
        run = {"chunk": t.train.teacher_chunk, "checkpoint": t.train.teacher_checkpointing, "grid": grid}
        parts = {}
        with torch.no_grad():
            target_feats = inp.teacher.features(x[:tb], **run)
        if w.perceptual > 0:
            recon_feats = inp.teacher.features(recon[:tb], sorted(t.teacher.perceptual_layers), **run)
            parts["perceptual"] = L.perceptual(recon_feats, target_feats)
        if w.distill > 0 and feats is not None:
            target = L.pool_to_grid(target_feats[t.teacher.distill_layer], grid)
            parts["distill"] = L.distillation(self.model.distill_head(feats[:tb]), target)
        return parts


def _text_batch(texts: _Texts, rows: torch.Tensor, seed: int, step: int, lo: int, hi: int):
    """The text choice of the global batch (world-independent), restricted to this process's
    slice [lo, hi) and renumbered within it."""
    text_rows, ids = texts.choose(rows, seed, step)
    if not len(text_rows):
        return text_rows, ids
    mine = (text_rows >= lo) & (text_rows < hi)
    return text_rows[mine] - lo, ids[mine]


def _logged(acc, loss: torch.Tensor, parts: dict[str, torch.Tensor]) -> dict[str, float]:
    """The step's losses as floats: the rank's own with one process, else each averaged over
    the ranks that computed it (a rank without texts has no contrastive term)."""
    if acc.num_processes == 1:
        return {"loss": float(loss.detach()), **{k: float(v.detach()) for k, v in parts.items()}}
    names = ("loss", *LOSS_NAMES)
    vals = torch.zeros(2, len(names), dtype=torch.float64, device=loss.device)
    for i, k in enumerate(names):
        v = loss if k == "loss" else parts.get(k)
        if v is not None:
            vals[0, i], vals[1, i] = float(v.detach()), 1.0
    vals = acc.reduce(vals, reduction="sum")
    return {k: float(vals[0, i] / vals[1, i]) for i, k in enumerate(names) if vals[1, i] > 0}


def train_tokenizer(
    cfg,
    *,
    sets: dict[str, ImageTextSet] | None = None,
    resume: bool = True,
    stop_at: int | None = None,
    progress: bool = True,
    evaluate: bool = True,
    logger: logging.Logger | None = None,
) -> dict[str, Any]:
    """Trains, saves `tokenizer.output`, writes metrics and the loss curve; returns the metrics.

    Runs in every process of a torchrun world (arm.tokenizer.launch); rank 0 writes the outputs.
    `sets` ({"train": ..., "val": ...}) replaces the curated store (tests, development).
    `stop_at` stops after that many steps with a checkpoint, as a preemption would.
    """
    from arm.tokenizer.data import store_sets

    tcfg = cfg.tokenizer
    t = tcfg.train
    say = (logger or log).info
    if t.threads:
        torch.set_num_threads(t.threads)
    acc = _accelerator(tcfg)
    device, rank, world = acc.device, acc.process_index, acc.num_processes
    if t.batch_size % world:
        raise ValueError(f"tokenizer.train.batch_size {t.batch_size} must be a multiple of the {world} processes")
    per_rank = t.batch_size // world
    if sets is None:
        sets = store_sets(cfg.data.store, tcfg.image_size, ("train", "val"),
                          cache_row_groups=max(16, 2 * t.shuffle_window))
    train, val = sets["train"], sets.get("val")
    if len(train) < 2:
        raise ValueError(f"tokenizer training needs at least 2 training images, got {len(train)}")
    if tcfg.grid != (cfg.world.grid, cfg.world.grid) or tcfg.image_size != cfg.world.image_size:
        say(f"note: token grid {tcfg.grid} at {tcfg.image_size}px is not aligned with the shapes world "
            f"({cfg.world.grid}x{cfg.world.grid} at {cfg.world.image_size}px)")
    t_setup = time.perf_counter()
    buckets = Buckets(tcfg.grids, tcfg.patch_size, tcfg.aspect.fit)
    per_bucket = _bucketed(train, buckets, t.batch_size, say)
    cached = all([p.images.preload(t.cache_mb // len(per_bucket)) for p in per_bucket])
    say(f"train images: {len(train)} ({'in memory' if cached else 'streamed from the store'}), "
        f"val images: {len(val) if val is not None else 0}, processes: {world}, precision: {t.precision}")

    w = tcfg.loss
    vocab = CaptionVocab.build(train.all_texts(), tcfg.caption.vocab_size)
    texts = _Texts(train, vocab, tcfg.caption.max_length)
    with acc.main_process_first():  # rank 0 embeds the texts into the cache the others then read
        text_encoder, text_cache = _text_encoder_with_cache(cfg, device)
        if w.contrastive > 0 and texts.table:
            texts.embeddings = text_encoder.embed(texts.table).to(device)
            if acc.is_main_process:
                text_encoder.save_cache(text_cache)
    scene_states = None
    if w.scene > 0:
        if tcfg.grid != (cfg.world.grid, cfg.world.grid):
            raise ValueError(f"tokenizer.loss.scene needs the token grid {tcfg.grid} to be the shapes world's "
                             f"{cfg.world.grid}x{cfg.world.grid} cells; set it to 0 for this tokenizer")
        scene_states = [scene_cell_states(p.images, cfg.world, p.grid) for p in per_bucket]
    teacher = build_teacher(tcfg.teacher, tcfg.grid).to(device) if (w.perceptual > 0 or w.distill > 0) else None
    if teacher is not None and t.precision == "bf16":
        teacher.to(torch.bfloat16)  # frozen: no master weights to keep, and autocast computes in bf16
    distill_dim = teacher.distill_dim if teacher is not None else 1
    setup_s = time.perf_counter() - t_setup

    fp = fingerprint(cfg, train)
    ckpt_dir = Path(tcfg.checkpoint_dir)
    found = accel.latest(ckpt_dir) if resume else None
    if found is not None and found[1].get("fingerprint") != fp:
        say(f"checkpoint {found[0]} is for another config or data; starting fresh")
        found = None

    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    if found is not None:
        model = VisualTokenizer(found[1]["spec"])
    else:
        model = VisualTokenizer.build(tcfg, caption_vocab=vocab.tokens, text_dim=text_encoder.dim, distill_dim=distill_dim,
                                      scene_states=scene_class_count(cfg.world) if scene_states is not None else 0)
    model.to(device).train()
    opt = torch.optim.AdamW(param_groups(model, t.weight_decay), lr=t.lr, betas=(0.9, 0.95))
    total = t.steps
    finetune_from = total - int(t.decoder_finetune * total)
    sched = lr_schedule(opt, t.warmup_steps, total, t.min_lr_ratio, finetune_from)
    objective, opt, sched = acc.prepare(Objective(model, _Inputs(cfg, teacher, texts)), opt, sched)
    start, curve, elapsed, cpu = 0, [], 0.0, 0.0
    if found is not None:
        acc.load_state(str(found[0]))
        p = found[1]
        start, curve, elapsed, cpu = int(p["step"]), list(p["curve"]), float(p["elapsed"]), float(p["cpu"])
        say(f"resumed from {found[0]} at step {start}")
    log_curve = CurveLog(tcfg.plots, curve) if acc.is_main_process else None  # the main process logs it

    def checkpoint(step: int) -> None:
        accel.save_state(acc, ckpt_dir, step, keep=1, meta={"fingerprint": fp, "step": step, "spec": model.spec,
                                                            "curve": curve, "elapsed": elapsed, "cpu": cpu, "processes": world})
        if log_curve is not None:
            log_curve.flush()

    end = total if stop_at is None else min(total, stop_at)
    bar = None
    if progress and end > start and acc.is_main_process:
        from arm.progress import progress_bar

        bar = progress_bar("tokenizer", total, initial=start, unit="step", logger=logger or log)
    scene_rows = [torch.tensor([i for i, s in enumerate(p.images.scenes) if s is not None], dtype=torch.long)
                  for p in per_bucket]
    order = BucketOrder([len(p.rows) for p in per_bucket], t.batch_size, cfg.seed, total, scene_rows,
                        int(t.scene_warmup * total), [p.images.groups for p in per_bucket], t.shuffle_window)
    lo, hi = rank * per_rank, (rank + 1) * per_rank
    # the teacher's sub-batch is a global number too: each process takes its share
    teacher_batch = max(1, t.teacher_batch // world) if t.teacher_batch else per_rank
    loader = step_loader([p.images for p in per_bucket], _RankRows(order, lo, hi), range(start, end),
                         t.workers if not cached else 0, cfg.seed, pin_memory=device.type == "cuda")
    params = [p for g in opt.param_groups for p in g["params"]]
    wants_texts = w.contrastive > 0 or w.caption > 0
    t0, c0 = time.perf_counter(), time.process_time()
    for step, pixels in zip(range(start, end), loader):
        b, local = order.rows(step)
        rows = per_bucket[b].rows[local]  # rows of the whole set, which the texts are indexed by
        x = pixels.to(device, non_blocking=True).float() / 255.0
        finetune = step >= finetune_from
        no_text = torch.empty(0, dtype=torch.long)
        text_rows, ids = (_text_batch(texts, rows, cfg.seed, step, lo, hi) if wants_texts and not finetune
                          else (no_text, no_text))
        scene = scene_states[b][local[lo:hi]] if scene_states is not None else None
        with acc.autocast():
            parts = objective(x, scene, text_rows, ids, step, finetune, teacher_batch)
        loss = sum(getattr(w, k) * v for k, v in parts.items())
        opt.zero_grad(set_to_none=True)
        acc.backward(loss)
        acc.clip_grad_norm_(params, t.grad_clip)
        opt.step()
        sched.step()
        row = {"step": step + 1, **_logged(acc, loss, parts), "lr": float(opt.param_groups[0]["lr"])}
        curve.append(row)
        if log_curve is not None:
            log_curve.log(row)
        if bar is not None:
            if (step + 1) % t.log_every == 0:
                bar.set_postfix(loss=f"{row['loss']:.4f}", l2=f"{row['l2']:.4f}")
            bar.update(1)
        if (step + 1) % t.log_every == 0:
            log.debug("step %d %s", step + 1, row)
        if (step + 1) % t.checkpoint_every == 0 or step + 1 == end:
            elapsed, cpu = elapsed + time.perf_counter() - t0, cpu + time.process_time() - c0
            t0, c0 = time.perf_counter(), time.process_time()
            checkpoint(step + 1)
    if bar is not None:
        bar.close()
    elapsed, cpu = elapsed + time.perf_counter() - t0, cpu + time.process_time() - c0
    if end < total:
        say(f"stopped at step {end} of {total}; checkpoint in {ckpt_dir}")
        return {"stopped_at": end, "curve": curve}
    if not acc.is_main_process:
        acc.wait_for_everyone()
        return {"train_steps": total, "rank": rank}

    model.eval()
    model.save_pretrained(tcfg.output)
    say(f"saved tokenizer to {tcfg.output} ({elapsed:.1f} s training)")
    metrics: dict[str, Any] = {
        "train_steps": total,
        "train_seconds": round(elapsed, 2),
        # CPU time of all threads: on a shared machine wall time overstates the cost.
        "train_cpu_seconds": round(cpu, 2),
        "setup_seconds": round(setup_s, 2),
        "train_images": len(train),
        "train_texts": len(texts.table),
        "torch_threads": torch.get_num_threads(),
        "processes": world,
        "precision": t.precision,
        "images_per_second": round(total * t.batch_size / max(elapsed, 1e-9), 1),
        "codebook_size": model.codebook_size,
        "grid": list(model.grid),
        "levels": model.levels,
        "final_losses": _tail_mean(curve, 20),
    }
    # The square-image metrics (shapes oracle, Fashion-MNIST) and the flow decoder read the square bucket.
    square_train, square_val, val_parts = train, val, None
    if len(buckets.grids) > 1:
        metrics["grids"] = [list(g) for g in model.grids]
        metrics["train_images_per_grid"] = {f"{p.grid[0]}x{p.grid[1]}": len(p.rows) for p in per_bucket}
        square_train = _square(per_bucket, model.grid, train)
        if val is not None:
            val_parts = bucket_parts(val, buckets)
            square_val = _square(val_parts, model.grid, val)
    if evaluate and square_val is not None:
        t_eval = time.perf_counter()
        from arm.tokenizer.metrics import bucket_reconstruction, evaluate as run_eval

        model._text_encoder = text_encoder  # reuse the loaded encoder and its cache
        metrics.update(run_eval(model, square_val, cfg))
        if val_parts is not None:
            metrics.update(bucket_reconstruction(model, val_parts, tcfg.eval))
        metrics["eval_seconds"] = round(time.perf_counter() - t_eval, 2)
        text_encoder.save_cache(text_cache)
    if tcfg.flow.train:
        # After the tokenizer is saved: the decoder lives in its directory and reads its frozen codes.
        from arm.tokenizer import flow_stage

        flow_stage.train_flow(model, square_train, cfg, say)
        if evaluate:
            metrics["decoders"] = flow_stage.compare_decoders(model, square_val, cfg)
    elif evaluate:
        Path(tcfg.report).mkdir(parents=True, exist_ok=True)  # a DVC out: there, if empty, without a flow decoder
    atomic_write_json(tcfg.metrics, metrics)
    acc.wait_for_everyone()  # the others return once the outputs are written
    return metrics


def _bucketed(train: ImageTextSet, buckets: Buckets, batch: int, say) -> list[Part]:
    """The training images per aspect bucket. One bucket: the set as it is (squashed to the
    square, as always). Several: each image framed at its own bucket; a bucket of fewer images
    than a batch is left out, with a note, since its batches would be short and ragged across
    processes."""
    if len(buckets.grids) == 1:
        return [Part(buckets.grids[0], torch.arange(len(train)), train)]
    parts = bucket_parts(train, buckets)
    for p in parts:
        if len(p.rows) < batch:
            say(f"note: aspect bucket {p.grid} has {len(p.rows)} training images, fewer than a batch "
                f"({batch}): left out of training")
    kept = [p for p in parts if len(p.rows) >= batch]
    if not kept:
        raise ValueError(f"no aspect bucket has a batch ({batch}) of training images: "
                         f"{ {p.grid: len(p.rows) for p in parts} }")
    return kept


def _square(parts: list[Part], grid: tuple[int, int], whole: ImageTextSet) -> ImageTextSet:
    """The images of the square bucket (none if it has none)."""
    return next((p.images for p in parts if p.grid == grid), whole.subset([]))


def _tail_mean(curve: list[dict[str, float]], n: int) -> dict[str, float]:
    """Mean of each loss over the last `n` steps that logged it (the decoder fine-tune logs only
    the pixel losses, so a semantic loss's tail ends where the fine-tune starts)."""
    keys = sorted({k for r in curve for k in r} - {"step", "lr"})
    return {k: round(float(np.mean([r[k] for r in curve if k in r][-n:])), 5) for k in keys}
