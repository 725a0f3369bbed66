"""The train_tokenizer stage: curated train split -> models/tokenizer/ + metrics + loss curves.

Exact resume: the checkpoint holds model, optimizer, scheduler, RNG states, the step and the
loss curve. The data order is a pure function of (seed, step) (one permutation per epoch, one
text choice per step), so the data position is the step itself and a resumed run sees the same
batches in the same order as an uninterrupted one.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import math
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from arm.io import atomic_path, atomic_write_json, atomic_write_text
from arm.tokenizer import losses as L
from arm.tokenizer.data import ImageTextSet, scene_cell_states, scene_class_count
from arm.tokenizer.model import VisualTokenizer, resolve_device
from arm.tokenizer.teachers import build_teacher
from arm.tokenizer.text_encoder import TextEncoder
from arm.tokenizer.vocab import PAD, CaptionVocab

log = logging.getLogger(__name__)

LOSS_NAMES = ("l1", "l2", "log_mse", "perceptual", "distill", "contrastive", "caption", "scene", "usage", "bound")
CHECKPOINT_FILE = "checkpoint.pt"


# ----------------------------------------------------------------------------- helpers


def fingerprint(cfg, train: ImageTextSet) -> str:
    """What a checkpoint must match to be resumed: training-relevant config, seed, data."""
    t = cfg.tokenizer.model_dump(mode="json")
    for k in ("eval", "tokens", "output", "metrics", "plots", "checkpoint_dir", "text_cache", "device"):
        t.pop(k, None)
    for k in ("checkpoint_every", "log_every", "threads", "cache_mb"):
        t["train"].pop(k, None)
    h = hashlib.sha256(json.dumps({"tok": t, "seed": cfg.seed}, sort_keys=True).encode())
    for key, texts in zip(train.keys, train.texts):
        h.update(key.encode())
        h.update("\x1f".join(texts).encode())
    return h.hexdigest()[:20]


def batch_indices(n: int, batch: int, seed: int, step: int) -> torch.Tensor:
    """The `step`-th batch: epochs are seeded permutations, cut into full batches."""
    per_epoch = max(1, n // batch)
    epoch, pos = divmod(step, per_epoch)
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    perm = torch.randperm(n, generator=g)
    return perm[pos * batch : (pos + 1) * batch]


def step_rows(n: int, scene_rows: torch.Tensor, warmup: int, batch: int, seed: int, step: int) -> torch.Tensor:
    """The training rows of `step`: from the scene images alone during the warmup (when they fill
    a batch), from every image after it."""
    if step < warmup and len(scene_rows) >= batch:
        return scene_rows[batch_indices(len(scene_rows), batch, seed, step)]
    return batch_indices(n, batch, seed, step)


def lr_lambda(warmup: int, total: int, min_ratio: float, restart: int | None = None) -> Callable[[int], float]:
    """Linear warmup, cosine to `min_ratio` at `restart` (default: the end), then, from `restart`
    on, a second cosine cycle from the peak (the decoder fine-tune)."""
    main = total if restart is None else restart

    def cosine(frac: float) -> float:
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, frac)))

    def f(step: int) -> float:
        if step >= main:
            return cosine((step - main) / max(1, total - main))
        if warmup and step < warmup:
            return (step + 1) / warmup
        return cosine((step - warmup) / max(1, main - warmup))

    return f


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        plain = p.ndim < 2 or name.endswith("pos") or "embed" in name or "logit_" in name
        (no_decay if plain else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    random.setstate(state["python"])
    n = state["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), *n[2:]))


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    buf = io.BytesIO()
    torch.save(state, buf)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buf.getvalue())


def load_checkpoint(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        # Our own file; still tensors and plain containers only.
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        log.warning("ignoring unreadable checkpoint %s: %s", path, e)
        return None


def write_curve(path: str | Path, curve: list[dict[str, float]]) -> None:
    cols = ["step", "loss", *LOSS_NAMES, "lr"]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for row in curve:
        w.writerow({k: (f"{row[k]:.6g}" if isinstance(row.get(k), float) else row.get(k, "")) for k in cols})
    atomic_write_text(path, buf.getvalue())


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

    `sets` ({"train": ..., "val": ...}) replaces the curated store (tests, development).
    `stop_at` stops after that many steps with a checkpoint, as a preemption would.
    """
    from arm.tokenizer.data import store_sets

    tcfg = cfg.tokenizer
    say = (logger or log).info
    if tcfg.train.threads:
        torch.set_num_threads(tcfg.train.threads)
    device = resolve_device(tcfg.device)
    if sets is None:
        sets = store_sets(cfg.data.store, tcfg.image_size, ("train", "val"))
    train, val = sets["train"], sets.get("val")
    if len(train) < 2:
        raise ValueError(f"tokenizer training needs at least 2 training images, got {len(train)}")
    if tcfg.grid != (cfg.world.grid, cfg.world.grid) or tcfg.image_size != cfg.world.image_size:
        say(f"note: token grid {tcfg.grid} at {tcfg.image_size}px is not aligned with the shapes world "
            f"({cfg.world.grid}x{cfg.world.grid} at {cfg.world.image_size}px)")
    t_setup = time.perf_counter()
    cached = train.preload(tcfg.train.cache_mb)
    say(f"train images: {len(train)} ({'in memory' if cached else 'streamed from the store'}), "
        f"val images: {len(val) if val is not None else 0}")

    w = tcfg.loss
    vocab = CaptionVocab.build(train.all_texts(), tcfg.caption.vocab_size)
    texts = _Texts(train, vocab, tcfg.caption.max_length)
    text_encoder, text_cache = _text_encoder_with_cache(cfg, device)
    if w.contrastive > 0 and texts.table:
        texts.embeddings = text_encoder.embed(texts.table).to(device)
        text_encoder.save_cache(text_cache)
    scene_states = None
    if w.scene > 0:
        if tcfg.grid != (cfg.world.grid, cfg.world.grid):
            raise ValueError(f"tokenizer.loss.scene needs the token grid {tcfg.grid} to be the shapes world's "
                             f"{cfg.world.grid}x{cfg.world.grid} cells; set it to 0 for this tokenizer")
        scene_states = scene_cell_states(train, cfg.world)
    teacher = build_teacher(tcfg.teacher, tcfg.grid).to(device) if (w.perceptual > 0 or w.distill > 0) else None
    distill_dim = teacher.distill_dim if teacher is not None else 1
    setup_s = time.perf_counter() - t_setup

    fp = fingerprint(cfg, train)
    ckpt_path = Path(tcfg.checkpoint_dir) / CHECKPOINT_FILE
    state = load_checkpoint(ckpt_path) if resume else None
    if state is not None and state.get("fingerprint") != fp:
        say(f"checkpoint {ckpt_path} is for another config or data; starting fresh")
        state = None

    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    if state is not None:
        model = VisualTokenizer(json.loads(state["spec"]))
    else:
        model = VisualTokenizer.build(tcfg, caption_vocab=vocab.tokens, text_dim=text_encoder.dim, distill_dim=distill_dim,
                                      scene_states=scene_class_count(cfg.world) if scene_states is not None else 0)
    model.to(device).train()
    opt = torch.optim.AdamW(param_groups(model, tcfg.train.weight_decay), lr=tcfg.train.lr, betas=(0.9, 0.95))
    total = tcfg.train.steps
    finetune_from = total - int(tcfg.train.decoder_finetune * total)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lr_lambda(tcfg.train.warmup_steps, total, tcfg.train.min_lr_ratio, finetune_from))
    start, curve, elapsed, cpu = 0, [], 0.0, 0.0
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        _set_rng_state(state["rng"])
        start, curve, elapsed = int(state["step"]), list(state["curve"]), float(state["elapsed"])
        cpu = float(state.get("cpu", 0.0))
        say(f"resumed from {ckpt_path} at step {start}")

    def checkpoint(step: int) -> None:
        save_checkpoint(ckpt_path, {
            "fingerprint": fp, "step": step, "spec": json.dumps(model.spec), "model": model.state_dict(),
            "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "rng": _rng_state(),
            "curve": curve, "elapsed": elapsed, "cpu": cpu,
        })

    grid = model.grid
    perc_layers = sorted(tcfg.teacher.perceptual_layers)
    end = total if stop_at is None else min(total, stop_at)
    bar = None
    if progress and end > start:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, initial=start, desc="tokenizer", unit="step", dynamic_ncols=True)
    t0, c0 = time.perf_counter(), time.process_time()
    scene_rows = torch.tensor([i for i, s in enumerate(train.scenes) if s is not None], dtype=torch.long)
    warmup = int(tcfg.train.scene_warmup * total)
    for step in range(start, end):
        idx = step_rows(len(train), scene_rows, warmup, tcfg.train.batch_size, cfg.seed, step)
        x = train.pixels(idx).to(device).float() / 255.0
        finetune = step >= finetune_from
        # The up-projection also feeds the semantic heads: it stays as they were trained with it.
        model.up.requires_grad_(not finetune)
        if finetune:  # codes frozen: only the pixel losses, which reach the decoder alone
            with torch.no_grad():
                q, _ = model.quantize(x)
            out = {"q": q, "recon": model.reconstruct(q)}
        else:
            out = model(x)
        recon = out["recon"]
        parts = L.reconstruction(recon, x, tcfg.patch_size)
        if not finetune:
            feats = out["features"]
            if w.bound > 0:
                parts["bound"] = L.latent_bound(out["z"], tcfg.train.bound_margin)
            if w.usage > 0:
                g = torch.Generator().manual_seed(cfg.seed * 7_919 + step)
                soft = model.soft_levels(out["z"], tcfg.train.usage_temperature)
                parts["usage"] = L.code_usage(soft, tcfg.train.usage_tokens, g)
            if scene_states is not None:
                parts["scene"] = L.scene(model.cell_logits(out["q"]), scene_states[idx].to(device))
        if teacher is not None:
            tb = tcfg.train.teacher_batch or len(idx)  # the batch is already shuffled: its head is a sample
            with torch.no_grad():
                target_feats = teacher.features(x[:tb])
            if w.perceptual > 0:
                recon_feats = teacher.features(recon[:tb], perc_layers)
                parts["perceptual"] = L.perceptual(recon_feats, target_feats)
            if w.distill > 0 and not finetune:
                target = L.pool_to_grid(target_feats[tcfg.teacher.distill_layer], grid)
                parts["distill"] = L.distillation(model.distill_head(feats[:tb]), target)
        rows = []
        if not finetune and (w.contrastive > 0 or w.caption > 0):
            rows, ids = texts.choose(idx, cfg.seed, step)
        if len(rows):
            rows, ids = rows.to(device), ids.to(device)
            sel = feats[rows]
            if w.contrastive > 0 and len(rows) > 1:
                parts["contrastive"] = L.sigmoid_contrastive(
                    model.align(sel), texts.embeddings[ids], ids, model.logit_scale, model.logit_bias
                )
            if w.caption > 0:
                tok = texts.tokens[ids.cpu()].to(device)
                width = int((tok != PAD).sum(1).max())
                tok = tok[:, :width]
                parts["caption"] = L.caption(model.caption_head(sel, tok[:, :-1]), tok[:, 1:])
        loss = sum(getattr(w, k) * v for k, v in parts.items())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], tcfg.train.grad_clip)
        opt.step()
        sched.step()
        row = {"step": step + 1, "loss": float(loss.detach()), "lr": float(opt.param_groups[0]["lr"])}
        row.update({k: float(v.detach()) for k, v in parts.items()})
        curve.append(row)
        if bar is not None:
            bar.update(1)
            if (step + 1) % tcfg.train.log_every == 0:
                bar.set_postfix(loss=f"{row['loss']:.4f}", l2=f"{row['l2']:.4f}")
        if (step + 1) % tcfg.train.log_every == 0:
            log.debug("step %d %s", step + 1, row)
        if (step + 1) % tcfg.train.checkpoint_every == 0 or step + 1 == end:
            elapsed, cpu = elapsed + time.perf_counter() - t0, cpu + time.process_time() - c0
            t0, c0 = time.perf_counter(), time.process_time()
            checkpoint(step + 1)
    if bar is not None:
        bar.close()
    elapsed, cpu = elapsed + time.perf_counter() - t0, cpu + time.process_time() - c0
    if end < total:
        say(f"stopped at step {end} of {total}; checkpoint in {ckpt_path}")
        return {"stopped_at": end, "curve": curve}

    model.eval()
    model.save_pretrained(tcfg.output)
    write_curve(tcfg.plots, curve)
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
        "images_per_second": round(total * tcfg.train.batch_size / max(elapsed, 1e-9), 1),
        "codebook_size": model.codebook_size,
        "grid": list(model.grid),
        "levels": model.levels,
        "final_losses": _tail_mean(curve, 20),
    }
    if evaluate and val is not None:
        t_eval = time.perf_counter()
        from arm.tokenizer.metrics import evaluate as run_eval

        model._text_encoder = text_encoder  # reuse the loaded encoder and its cache
        metrics.update(run_eval(model, val, cfg))
        metrics["eval_seconds"] = round(time.perf_counter() - t_eval, 2)
        text_encoder.save_cache(text_cache)
    atomic_write_json(tcfg.metrics, metrics)
    return metrics


def _tail_mean(curve: list[dict[str, float]], n: int) -> dict[str, float]:
    """Mean of each loss over the last `n` steps that logged it (the decoder fine-tune logs only
    the pixel losses, so a semantic loss's tail ends where the fine-tune starts)."""
    keys = sorted({k for r in curve for k in r} - {"step", "lr"})
    return {k: round(float(np.mean([r[k] for r in curve if k in r][-n:])), 5) for k in keys}
