"""The pretraining stage: packed multi-task next-token prediction on a DeepSpeed engine.

`pretrain(cfg)` runs in every process of a torchrun/deepspeed launch (or alone): it builds the
text tokenizer and vocabulary, the packed stream, the model and the engine, resumes from the
newest checkpoint of the same run, trains, evaluates per-task validation loss, checkpoints, and
finally exports a stock transformers model dir (rank 0) with metrics and the loss curve.

A run dir (checkpoints/pretrain/<fingerprint>) is keyed by everything that shapes the loss
curve (params, data version, world size), so changed params never resume a stale run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from arm.config import ArmConfig
from arm.curves import CurveLog
from arm.io import atomic_path, atomic_write_json
from arm.model.build import build_model, flops_per_token, use_factorized
from arm.model.io import export_model
from arm.fs import join
from arm.text.sequences import TASKS, Example, TokExample, collate, document, eval_rows, tokenize_examples
from arm.text.tokenizer import build_tokenizer, encode_texts, load_tokenizer, save_tokenizer
from arm.train import checkpoint as ckpt
from arm.train import shards
from arm.train import dist, remote
from arm.train.data import ExampleSet, load_examples, training_texts
from arm.train.flops import mfu, peak_flops
from arm.train.schedule import lr_multiplier

# Fields that change how a run is watched, not what it computes: they stay out of the fingerprint.
_BOOKKEEPING = {"log_every", "checkpoint_every", "keep_checkpoints", "time_limit_min", "output", "checkpoints", "metrics",
                "plot", "remote"}


@dataclass
class TrainState:
    step: int = 0  # optimizer steps done
    tokens: int = 0  # row tokens consumed (all ranks), padding included
    pad_tokens: int = 0  # of which padding (all ranks)
    target_tokens: int = 0  # tokens scored by the loss (all ranks)
    train_time: float = 0.0  # seconds spent in training steps (not eval/checkpoint)
    history: list[dict] = field(default_factory=list)

    def client_state(self) -> dict:
        return {"arm": json.dumps(self.__dict__)}

    @staticmethod
    def from_client_state(cs: dict) -> "TrainState":
        return TrainState(**json.loads(cs["arm"]))


def fingerprint(cfg: ArmConfig, data_version: str) -> str:
    """The run's identity. Not the world size: each rank's data position carries it and refuses
    another one with a clear error (arm.train.shards), where a new run dir would restart silently."""
    pre = {k: v for k, v in cfg.pretrain.model_dump(mode="json").items() if k not in _BOOKKEEPING}
    blob = {
        "seed": cfg.seed,
        "text": cfg.text.model_dump(mode="json"),
        "model": cfg.model.model_dump(mode="json"),
        "pretrain": pre,
        "data": data_version,
    }
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()


def ds_config(cfg: ArmConfig, world_size: int) -> dict:
    p = cfg.pretrain
    return {
        "train_micro_batch_size_per_gpu": p.micro_batch,
        "gradient_accumulation_steps": p.grad_accum,
        "train_batch_size": p.micro_batch * p.grad_accum * world_size,
        "gradient_clipping": p.grad_clip,
        "zero_optimization": {"stage": p.zero_stage},
        "bf16": {"enabled": p.precision == "bf16"},
        "fp16": {"enabled": p.precision == "fp16"},
        # 16-bit weights, fp32 gradient accumulation across micro-steps (and fp32 master weights in
        # the ZeRO optimizer): summing grad_accum bf16 gradients in bf16 loses their low bits
        **({"data_types": {"grad_accum_dtype": "fp32"}} if p.precision != "fp32" else {}),
        # our torch AdamW: no fused_adam extension to compile; ZeRO accepts it with this flag
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


def param_groups(model, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            ndim = len(getattr(p, "ds_shape", p.shape))  # ZeRO-3 shards are flat; ds_shape is the real one
            (decay if ndim >= 2 else no_decay).append(p)  # no decay on norms and biases
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _chunk_ce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float(), targets, reduction="none")


def shift_left(t: torch.Tensor) -> torch.Tensor:
    """[B, S] -> row-wise next position's value (token t predicts t+1), 0 at the last position."""
    return torch.cat([t[:, 1:], torch.zeros_like(t[:, :1])], 1)


def chunked_ce(logits: torch.Tensor, input_ids: torch.Tensor, loss_mask: torch.Tensor, chunk: int) -> torch.Tensor:
    """[B, S] next-token cross-entropy, zero where the mask (shifted with the targets) is 0.

    The fp32 cross-entropy runs over `chunk` tokens at a time under activation checkpointing, so
    neither an fp32 copy of the logits nor their fp32 log-softmax is ever held whole, and the
    logits are read as one flat view (slicing off their last position would copy all of them).
    `arm plan` measures this very function on fake tensors."""
    from torch.utils.checkpoint import checkpoint

    targets = shift_left(input_ids).reshape(-1)
    flat = logits.reshape(-1, logits.shape[-1])
    parts = []
    for i in range(0, flat.shape[0], chunk):
        args = (flat[i : i + chunk], targets[i : i + chunk])
        parts.append(checkpoint(_chunk_ce, *args, use_reentrant=False) if flat.requires_grad else _chunk_ce(*args))
    return torch.cat(parts).view_as(input_ids) * shift_left(loss_mask)


def token_losses(logits: torch.Tensor, batch: dict[str, torch.Tensor], chunk: int = 1024
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-task (loss sum, target count) and the mean loss of a batch."""
    ce = chunked_ce(logits, batch["input_ids"], batch["loss_mask"], chunk)
    mask = shift_left(batch["loss_mask"]).bool()
    task = shift_left(batch["task_ids"])
    sums = torch.stack([ce[task == i].sum() for i in range(len(TASKS))])
    counts = torch.stack([(mask & (task == i)).sum() for i in range(len(TASKS))]).to(sums.dtype)
    return sums, counts, ce.sum() / mask.sum().clamp(min=1)


def _all_reduce(t: torch.Tensor) -> torch.Tensor:
    import torch.distributed as td

    if td.is_initialized() and td.get_world_size() > 1:
        td.all_reduce(t)
    return t


def _any_rank(flag: bool) -> bool:
    """One decision for all ranks (each has its own clock): stopping alone would hang the others."""
    t = torch.tensor([1.0 if flag else 0.0])
    if torch.cuda.is_available():
        t = t.cuda()
    return bool(_all_reduce(t).item() > 0)


@torch.no_grad()
def evaluate(engine, rows_by_task: dict, denv: dist.DistEnv, device, micro_batch: int, loss_chunk: int) -> dict[str, float]:
    """Per-task validation loss (nats/target token). Rows are sharded over ranks with equal counts
    (the last shard repeats a row with zero weight) so ZeRO-3's collective forwards stay in step."""
    engine.eval()
    out = {}
    for task, rows in rows_by_task.items():
        per_rank = math.ceil(len(rows) / denv.world_size)
        mine = [(rows[i], 1.0) if i < len(rows) else (rows[0], 0.0)
                for i in range(denv.rank * per_rank, (denv.rank + 1) * per_rank)]
        acc = torch.zeros(2, dtype=torch.float64, device=device)
        for i in range(0, len(mine), micro_batch):
            chunk = mine[i : i + micro_batch]
            batch = {k: v.to(device) for k, v in collate([r for r, _ in chunk]).items()}
            weight = torch.tensor([w for _, w in chunk], device=device)
            batch["loss_mask"] = batch["loss_mask"] * weight[:, None].long()
            logits = engine(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits
            sums, counts, _ = token_losses(logits, batch, loss_chunk)
            acc += torch.stack([sums.sum(), counts.sum()]).double()
        _all_reduce(acc)
        out[task] = float(acc[0] / acc[1]) if acc[1] > 0 else float("nan")
    engine.train()
    return out


def prepare_tokenizer(cfg: ArmConfig, data: ExampleSet | None, run_dir: Path, denv: dist.DistEnv):
    """Rank 0 trains (or loads) the text tokenizer into the run dir; every rank then loads it.
    With a run store (pretrain.remote) rank 0 takes the store's copy or uploads the one it trains,
    and the other nodes pull it from there: nodes share no disk."""
    tok_dir = run_dir / "tokenizer"

    def build() -> None:
        spec = data.image
        tok, layout = build_tokenizer(cfg.text, training_texts(data.train), spec.codebook_size, spec.grid, spec.levels,
                                      spec.grids)
        with atomic_path(tok_dir) as tmp:
            save_tokenizer(tok, layout, tmp)

    mirror = remote.mirror_for(cfg, run_dir, denv)
    if mirror is not None:
        mirror.share_dir(tok_dir, "tokenizer", denv, build)
    else:
        if denv.is_main and not (tok_dir / "tokenizer.json").exists():
            build()
        dist.barrier()
    return load_tokenizer(tok_dir)


def fitting_documents(examples: list[Example], encode, layout, seq_len: int, too_long: dict[str, int],
                      chunk: int = 4096) -> Iterator[TokExample]:
    """The examples tokenized `chunk` at a time (never all at once), without those that do not
    fit a row in their longest, conditioned form: dropped once, when the shards are written, and
    counted per task in `too_long`, not found again by every rank."""
    for i in range(0, len(examples), chunk):
        for d in tokenize_examples(examples[i : i + chunk], encode):
            if len(document(d, layout)[0]) > seq_len:
                too_long[d.task] = too_long.get(d.task, 0) + 1
            else:
                yield d


def _seed_process(seed: int, rank: int) -> None:
    s = seed * 1000 + rank
    random.seed(s)
    np.random.seed(s)
    torch.manual_seed(s)


def pretrain(cfg: ArmConfig, *, stop_after: int | None = None, progress: bool = True,
             logger: logging.Logger | logging.LoggerAdapter | None = None) -> dict:
    """Train (resuming if a checkpoint of this run exists) and export. Returns the metrics.

    stop_after: stop with a checkpoint once this many optimizer steps are done in total, without
    exporting (chunked training on preemptible workers; the resume test uses it).
    """
    import deepspeed

    log = logger or logging.getLogger("arm.pretrain")
    p = cfg.pretrain
    # DeepSpeed compiles its CPU shared-memory allreduce once; keep the build in one cache for all runs
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path(__file__).resolve().parents[2] / ".arm-cache" / "torch_extensions"))
    denv = dist.env()
    if p.threads:
        torch.set_num_threads(p.threads)
    dist.init(denv)
    device = dist.device_for(denv)
    t_start = time.perf_counter()

    # Only rank 0 reads the examples: it builds the text tokenizer, writes the training documents
    # as token shards once per run (local run dir, or the run store that every node reads) and
    # packs the validation rows; every rank then streams its own shards of the documents.
    data = None

    def load() -> str:
        nonlocal data
        data = load_examples(cfg)
        if not data.train:
            raise ValueError("no training examples: check the curated store / tokens (pretrain.data, pretrain.images)")
        return data.version

    version = dist.from_main(load)  # a failure on rank 0 reaches every rank, none waits on it
    run_dir = Path(p.checkpoints) / fingerprint(cfg, version)[:16]
    run_dir.mkdir(parents=True, exist_ok=True)
    tok, layout = prepare_tokenizer(cfg, data, run_dir, denv)
    docs_url = join(f"{p.remote.rstrip('/')}/checkpoints/{run_dir.name}", "documents") if p.remote \
        else str(run_dir / "documents")
    encode = partial(encode_texts, tok)

    def prepare() -> tuple[dict, dict]:
        summary = {"train": len(data.train), "val": len(data.val), "skipped": data.skipped,
                   "image": data.image.reference, "too_long": {}}
        try:
            summary["too_long"] = shards.read_manifest(docs_url, cfg.storage)["meta"]["too_long"]
        except FileNotFoundError:
            too_long = summary["too_long"] = {t: 0 for t in TASKS}
            fits = fitting_documents(data.train, encode, layout, cfg.text.seq_len, too_long)
            # the manifest's meta is written after the last shard, so the counts are complete by then
            shards.write_documents(fits, docs_url, storage=cfg.storage, docs_per_shard=p.shard_docs,
                                   row_group_docs=p.row_group_docs,
                                   meta={"data_version": version, "vocab_layout": layout.to_json(), "too_long": too_long})
        return summary, eval_rows(tokenize_examples(data.val, encode), layout, cfg.text.seq_len, p.eval_rows)

    summary, val = dist.from_main(prepare)
    data = None  # rank 0 drops the examples: from here on every rank only streams
    stream = shards.DocumentStream(
        docs_url, rank=denv.rank, world_size=denv.world_size, layout=layout, seq_len=cfg.text.seq_len,
        weights=cfg.text.task_weights, cfg_dropout=cfg.text.cfg_dropout, seed=cfg.seed,
        block_docs=cfg.text.pack_block, storage=cfg.storage,
    )

    ds_cfg = ds_config(cfg, denv.world_size)
    if p.zero_stage == 3:
        # transformers builds (or loads) the model inside deepspeed.zero.Init while this is set:
        # each rank then holds only its shard, never the whole model (7b)
        from transformers.integrations import HfDeepSpeedConfig, unset_hf_deepspeed_config

        hf_ds = HfDeepSpeedConfig(ds_cfg)  # noqa: F841 (kept alive until the engine exists)
    model = build_model(cfg.model, layout, seed=cfg.seed)
    if p.activation_checkpointing:
        # non-reentrant: works with ZeRO-3's parameter hooks and inputs that need no grad
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    n_params = sum(getattr(q, "ds_numel", q.numel()) for q in model.parameters())
    optimizer = torch.optim.AdamW(param_groups(model, p.weight_decay), lr=p.lr, betas=p.betas)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_multiplier(p.schedule, p.warmup_steps, p.max_steps, p.min_lr_ratio))
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler, config=ds_cfg)
    if p.zero_stage == 3:
        unset_hf_deepspeed_config()  # the export below builds a plain CPU model
        del hf_ds
    _seed_process(cfg.seed, denv.rank)

    state = TrainState()
    position = None  # this rank's data position; None = the start of its stream
    mirror = remote.mirror_for(cfg, run_dir, denv)
    # with a run store, its `latest` decides (a node's disk may hold a tag other nodes never uploaded)
    tag = mirror.pull_checkpoint(run_dir, denv) if mirror is not None else ckpt.latest_tag(run_dir)
    if tag:
        # before DeepSpeed reads partitions laid out for another world size: a clear refusal
        position = ckpt.load_data_position(run_dir / tag, denv.rank, denv.world_size)
        load_path, client = engine.load_checkpoint(str(run_dir), tag=tag)
        if load_path is None:
            raise RuntimeError(f"{run_dir}/{tag}: DeepSpeed could not load the checkpoint")
        state = TrainState.from_client_state(client)
        ckpt.load_rng(run_dir / tag, denv.rank)
        if denv.is_main:
            log.info("resumed %s at step %d", run_dir / tag, state.step)
    curve = CurveLog(p.plot, state.history) if denv.is_main else None  # rank 0 logs the curve

    def save() -> None:
        tag_dir = run_dir / ckpt.tag_name(state.step)
        tag_dir.mkdir(parents=True, exist_ok=True)
        ckpt.save_rng(tag_dir, denv.rank)
        ckpt.save_data_position(tag_dir, denv.rank, position)
        engine.save_checkpoint(str(run_dir), tag=tag_dir.name, client_state=state.client_state())
        dist.barrier()
        if mirror is not None:
            mirror.push_checkpoint(run_dir, tag_dir.name, denv, p.keep_checkpoints)
        if denv.local_rank == 0:  # every node keeps its own disk in bounds
            ckpt.prune(run_dir, p.keep_checkpoints)
        if curve is not None:
            curve.flush()

    flops = flops_per_token(cfg.model, layout, cfg.text.seq_len)
    rows = stream.rows(position)
    bar = None
    if progress and denv.is_main:
        from arm.progress import progress_bar

        bar = progress_bar("pretrain", p.max_steps, initial=state.step, unit="step", logger=log)
    stop_reason = "done"
    while state.step < p.max_steps:
        t0 = time.perf_counter()
        acc = torch.zeros(2, len(TASKS), dtype=torch.float64, device=device)
        n_tok = torch.zeros(2, dtype=torch.float64, device=device)  # tokens, padding (this rank)
        for _ in range(p.grad_accum):
            mine = []
            for _ in range(p.micro_batch):
                position, row = next(rows)
                mine.append(row)
            n_tok += torch.tensor([sum(len(r.input_ids) for r in mine), sum(r.n_pad for r in mine)],
                                  dtype=torch.float64, device=device)
            batch = {k: v.to(device) for k, v in collate(mine).items()}
            logits = engine(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits
            sums, counts, loss = token_losses(logits, batch, p.loss_chunk)
            engine.backward(loss)
            engine.step()
            acc += torch.stack([sums.detach(), counts]).double()
        _all_reduce(acc)
        _all_reduce(n_tok)
        state.step += 1
        state.tokens += int(n_tok[0])
        state.pad_tokens += int(n_tok[1])
        state.target_tokens += int(acc[1].sum())
        state.train_time += time.perf_counter() - t0
        row = {"step": state.step, "tokens": state.tokens, "lr": engine.get_lr()[0],
               "loss": float(acc[0].sum() / acc[1].sum().clamp(min=1))}
        row.update({f"loss_{t}": float(acc[0, i] / acc[1, i]) if acc[1, i] > 0 else float("nan") for i, t in enumerate(TASKS)})
        if stop_after is not None and state.step >= stop_after and state.step < p.max_steps:
            stop_reason = "stop_after"
        elif p.time_limit_min and state.step < p.max_steps and \
                _any_rank(time.perf_counter() - t_start > 60 * p.time_limit_min):
            stop_reason = "time_limit"
            log.warning("time limit of %.1f min reached at step %d of %d", p.time_limit_min, state.step, p.max_steps)
        if state.step % p.eval_every == 0 or state.step == p.max_steps or stop_reason == "time_limit":
            row.update({f"val_{t}": v for t, v in evaluate(engine, val, denv, device, p.micro_batch, p.loss_chunk).items()})
        state.history.append(row)
        if curve is not None:
            curve.log(row)
        if bar is not None:
            if state.step % p.log_every == 0:
                bar.set_postfix(loss=f"{row['loss']:.3f}", tok_s=f"{state.tokens / max(state.train_time, 1e-9):.0f}")
            bar.update(1)
        if state.step % p.log_every == 0 and denv.is_main:
            log.info("step %d loss %.4f lr %.2e", state.step, row["loss"], row["lr"])
        if stop_reason != "done":
            break
        if state.step % p.checkpoint_every == 0 and state.step < p.max_steps:
            save()
    if bar is not None:
        bar.close()
    save()
    if stop_reason == "stop_after":
        return {"stopped": stop_reason, "step": state.step, "run_dir": str(run_dir)}

    # ZeRO-3 shards the weights: every rank takes part in gathering them, layer by layer, into
    # one 16-bit copy on rank 0 (None elsewhere), which the export uses as is
    state_dict = engine._zero3_consolidated_16bit_state_dict() if p.zero_stage == 3 else None
    final_val = {t[len("val_"):]: v for t, v in state.history[-1].items() if t.startswith("val_")}
    tokens_per_s = state.tokens / max(state.train_time, 1e-9)
    peak = peak_flops(device, p.precision) * denv.world_size
    metrics = {
        "steps": state.step,
        "stopped": stop_reason,
        "parameters": n_params,
        "world_size": denv.world_size,
        "tokens_seen": state.tokens,
        "target_tokens_seen": state.target_tokens,
        "train_seconds": round(state.train_time, 2),
        "tokens_per_s": round(tokens_per_s, 1),
        "flops_per_token": flops.per_token,
        "achieved_flops": tokens_per_s * flops.per_token,
        "peak_flops_matmul": peak,
        "mfu": mfu(tokens_per_s, flops.per_token, peak),
        "padding_waste": round(state.pad_tokens / max(state.tokens, 1), 4),
        "final_train_loss": float(np.mean([h["loss"] for h in state.history[-max(1, p.log_every):]])),
        "val_loss": final_val,
        "examples": {"train": summary["train"], "val": summary["val"], "dropped_too_long": summary["too_long"],
                     "skipped": summary["skipped"]},
        "vocab_size": layout.vocab_size,
        "run": run_dir.name,
    }
    if denv.is_main:
        manifest = {
            "visual_tokenizer": summary["image"],
            "data": {"version": version, "source": p.data, "images": p.images,
                     "train_examples": summary["train"], "val_examples": summary["val"]},
            "text_tokenizer": cfg.text.tokenizer,
            "model": {"arch": cfg.model.arch, "parameters": n_params,
                      "factorized_image_embeddings": "folded" if use_factorized(cfg.model, layout) else "none"},
            "pretrain": {"steps": state.step, "tokens": state.tokens, "seed": cfg.seed, "run": run_dir.name,
                         "val_loss": final_val},
        }
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(p.precision)
        export_model(engine.module, tok, layout, manifest, p.output, dtype=dtype, state_dict=state_dict)
        if mirror is not None:
            mirror.push_export(Path(p.output), metrics)
        atomic_write_json(p.metrics, metrics)
    dist.barrier()
    return metrics


def _nnodes(env) -> int:
    try:
        return int(env.get("NNODES", "1"))
    except ValueError:
        raise RuntimeError(f"NNODES must be a whole number of nodes, got {env['NNODES']!r}") from None


def _rendezvous_args(env) -> list[str]:
    """One node: torchrun --standalone. Several (NNODES > 1; the Prefect fan-out in flows/pretrain.py
    sets these per node): torchrun's c10d rendezvous at MASTER_ADDR:MASTER_PORT (default 29400)
    under RDZV_ID, which all nodes of one job share. NODE_RANK=0 marks the node that hosts the
    rendezvous store; global ranks are handed out by the rendezvous itself (torchrun ignores
    --node_rank under c10d), so nothing assumes where rank 0 runs."""
    nnodes = _nnodes(env)
    if nnodes <= 1:
        return ["--standalone"]
    missing = [k for k in ("MASTER_ADDR", "RDZV_ID") if not env.get(k)]
    if missing:
        raise RuntimeError(f"NNODES={nnodes} needs {', '.join(missing)} in the environment: the rendezvous host "
                           "(MASTER_ADDR[:MASTER_PORT]) and a job id shared by all nodes (RDZV_ID)")
    args = [f"--nnodes={nnodes}", "--rdzv_backend=c10d", f"--rdzv_endpoint={env['MASTER_ADDR']}:{env.get('MASTER_PORT', '29400')}",
            f"--rdzv_id={env['RDZV_ID']}"]
    if env.get("NODE_RANK"):
        if not env["NODE_RANK"].isdigit() or int(env["NODE_RANK"]) >= nnodes:
            raise RuntimeError(f"NODE_RANK={env['NODE_RANK']!r} is not a node of NNODES={nnodes} (0..{nnodes - 1})")
        args.append(f"--rdzv_conf=is_host={int(int(env['NODE_RANK']) == 0)}")
    return args


def pretrain_multiprocess(params: str, preset: str | None, overrides: list[str], nproc: int,
                          stop_after: int | None = None) -> dict:
    """Run the stage in `nproc` local processes via torchrun (joining the other nodes' when NNODES > 1);
    returns rank 0's metrics."""
    from arm.config import load_config

    cfg = load_config(params, preset, overrides)
    remote.require_store(cfg.pretrain.remote, _nnodes(os.environ))
    dist.torchrun("arm.train.launch", nproc, params, preset, overrides, rendezvous=_rendezvous_args(os.environ),
                  extra=["--stop-after", str(stop_after)] if stop_after else None)
    if stop_after and stop_after < cfg.pretrain.max_steps:
        return {"stopped": "stop_after", "step": stop_after, "run_dir": cfg.pretrain.checkpoints}
    if cfg.pretrain.remote:  # rank 0 may have run on another node
        return remote.fetch_metrics(cfg.pretrain.remote, cfg.storage)
    return json.loads(Path(cfg.pretrain.metrics).read_text())
