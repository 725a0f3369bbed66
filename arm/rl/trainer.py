"""The RL stage: GRPO post-training of a model dir on T2I and editing prompts of the shapes world.

Each step draws `prompts_per_step` prompts (tasks alternating over `rl.tasks`), samples
`group_size` images per prompt with the sampling engine (KV cache, grammar-constrained image
spans; no grad), decodes and scores them with the reward registry, and takes policy-gradient
steps on the GRPO objective (arm.rl.grpo). Everything random is a function of (rl.seed, step):
prompts of the stream "rl:<seed>:<i>", one sampling seed per sample, the minibatch order.

A run dir (checkpoints/rl/<fingerprint>) is keyed by the params that shape the curve and the
base model's weights; a checkpoint holds the policy, optimizer, scheduler, RNG and the prompt
position, so an interrupted run resumes with the same rewards and losses. The result is
exported like arm-base (safetensors, tokenizer, vocab_layout.json, manifest.json + `rl`).
"""

from __future__ import annotations

import copy
import csv
import hashlib
import io
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_model, save_model

from arm.config import ArmConfig
from arm.data.oracle import parse
from arm.io import atomic_path, atomic_write_json, atomic_write_text, sha256_file
from arm.model.config import SamplingConfig
from arm.model.io import export_model, load_model as load_model_dir
from arm.rl import grpo, rewards
from arm.rl.codec import load_codec
from arm.rl.prompts import Prompt, draw_prompts
from arm.sample.pipeline import ArmPipeline, uncond_prompt
from arm.text.formats import format_prompt
from arm.train import checkpoint as ckpt
from arm.train.schedule import lr_multiplier

log = logging.getLogger("arm.rl")

# Fields that change where results go or how a run is watched, not what it computes.
_BOOKKEEPING = {"output", "checkpoints", "metrics", "plot", "log_every", "checkpoint_every", "keep_checkpoints",
                "time_limit_min", "threads", "sample_batch", "logprob_chunk", "device"}


@dataclass
class RLState:
    step: int = 0  # RL steps done
    prompt_position: int = 0  # index of the next prompt in the stream
    samples: int = 0  # images sampled and scored
    train_time: float = 0.0
    history: list[dict] = field(default_factory=list)


def base_identity(base: Path) -> dict:
    weights = sorted(base.glob("*.safetensors"))
    if not weights:
        raise FileNotFoundError(f"{base}: no safetensors weights (is this an exported model dir?)")
    return {"path": str(base), "sha256": {w.name: sha256_file(w) for w in weights}}


def fingerprint(cfg: ArmConfig, base_id: dict) -> str:
    rl = {k: v for k, v in cfg.rl.model_dump(mode="json").items() if k not in _BOOKKEEPING}
    blob = {"rl": rl, "world": cfg.world.model_dump(mode="json"), "base": base_id["sha256"]}
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()


def sample_seed(seed: int, step: int, n: int) -> int:
    """The sampling seed of sample n of a step: independent of batch composition and of resumes."""
    digest = hashlib.sha256(f"rl-sample:{seed}:{step}:{n}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def _generator(*parts) -> torch.Generator:
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "big") >> 1)


# ----------------------------------------------------------------------------- checkpoints


def save_checkpoint(run_dir: Path, state: RLState, model, optimizer, scheduler, keep: int) -> Path:
    """A complete tag dir, then `latest` pointing at it: a crash mid-save keeps the previous one."""
    tag = ckpt.tag_name(state.step)
    with atomic_path(run_dir / tag) as tmp:
        tmp.mkdir(parents=True)
        save_model(model, str(tmp / "policy.safetensors"))
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        ckpt.save_rng(tmp, 0)
        atomic_write_json(tmp / "state.json", asdict(state))
    atomic_write_text(run_dir / ckpt.LATEST, tag + "\n")
    ckpt.prune(run_dir, keep)
    return run_dir / tag


def load_checkpoint(tag_dir: Path, model, optimizer, scheduler) -> RLState:
    missing, unexpected = load_model(model, str(tag_dir / "policy.safetensors"), strict=True)
    if missing or unexpected:
        raise RuntimeError(f"{tag_dir}: policy weights do not match the model ({missing[:3]}, {unexpected[:3]})")
    # our own files, written by save_checkpoint; weights_only keeps unpickling to tensors and plain types
    optimizer.load_state_dict(torch.load(tag_dir / "optimizer.pt", weights_only=True))
    scheduler.load_state_dict(torch.load(tag_dir / "scheduler.pt", weights_only=True))
    ckpt.load_rng(tag_dir, 0)
    return RLState(**json.loads((tag_dir / "state.json").read_text()))


# ----------------------------------------------------------------------------- curves


def curve_columns(cfg: ArmConfig) -> list[str]:
    cols = ["step", "lr", "reward", *[f"reward_{t}" for t in cfg.rl.tasks]]
    for t in cfg.rl.tasks:
        cols += [f"{t}_{n}" for n, w in sorted(cfg.rl.rewards[t].items()) if w]
    return cols + ["loss", "policy", "kl", "clip_fraction", "ratio", "zero_signal_groups", "sample_s", "update_s"]


def write_curve(history: list[dict], cols: list[str], path: Path) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore")
    w.writeheader()
    for row in history:
        w.writerow({c: ("" if row.get(c) is None else row[c]) for c in cols})
    atomic_write_text(path, buf.getvalue())


# ----------------------------------------------------------------------------- the trainer


class GRPOTrainer:
    def __init__(self, cfg: ArmConfig, progress: bool = True):
        self.cfg, self.r = cfg, cfg.rl
        self.progress = progress
        if self.r.threads:
            torch.set_num_threads(self.r.threads)
        base = Path(self.r.base)
        if not base.is_dir():
            raise FileNotFoundError(f"rl.base {base}: model dir not found (run `arm pretrain` first)")
        self.base_id = base_identity(base)
        self.model, self.tok, self.layout, self.manifest = load_model_dir(base, device=self.r.device)
        self.codec = load_codec(base, self.manifest, cfg.world, device=self.r.device)
        if self.codec.codebook_size != self.layout.codebook_size or tuple(self.codec.grid) != tuple(self.layout.grid):
            raise ValueError(
                f"{base}: visual tokenizer ({self.codec.codebook_size} codes, grid {self.codec.grid}) does not match "
                f"the vocabulary layout ({self.layout.codebook_size} codes, grid {self.layout.grid})"
            )
        rewards.check_weights(self.r.rewards, self.r.tasks, self.codec)
        self.weights = {t: dict(self.r.rewards[t]) for t in self.r.tasks}
        self.ctx = rewards.RewardContext(cfg.world, self.codec, self.r.pq_tolerance)
        self.model.config.use_cache = False
        # beta = 0 means no KL term, so no second copy of the weights is ever held
        self.reference = None
        if self.r.beta > 0:
            self.reference = copy.deepcopy(self.model).eval().requires_grad_(False)
        self.optimizer = torch.optim.AdamW(
            [p for p in self.model.parameters() if p.requires_grad],
            lr=self.r.lr, betas=self.r.betas, weight_decay=self.r.weight_decay,
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_multiplier(self.r.schedule, self.r.warmup_steps, self.r.steps, self.r.min_lr_ratio)
        )
        sampling = SamplingConfig(device=self.r.device, batch_size=self.r.sample_batch, cfg_scale=self.r.cfg_scale,
                                  temperature=self.r.temperature, top_k=0, top_p=1.0)
        self.pipe = ArmPipeline(self.model, self.tok, self.layout, None, sampling)
        self.run_dir = Path(self.r.checkpoints) / fingerprint(cfg, self.base_id)[:16]
        self.state = RLState()
        self.columns = curve_columns(cfg)

    # ------------------------------------------------------------------ pieces

    def resume(self) -> bool:
        tag = ckpt.latest_tag(self.run_dir)
        if not tag:
            return False
        self.state = load_checkpoint(self.run_dir / tag, self.model, self.optimizer, self.scheduler)
        log.info("resumed %s at step %d", self.run_dir / tag, self.state.step)
        return True

    def prompt_ids(self, prompts: list[Prompt]) -> list[list[int]]:
        sources = [p for p in prompts if p.task == "edit"]
        src_codes = self.codec.encode_scenes([p.source for p in sources]) if sources else None
        code_of = {p.index: src_codes[i].tolist() for i, p in enumerate(sources)}
        out = []
        for p in prompts:
            text = self.pipe.encode_text(p.text, f"rl prompt {p.index}")
            if p.task == "t2i":
                out.append(format_prompt("generate", self.layout, text=text))
            else:
                out.append(format_prompt("edit", self.layout, text=text, image=code_of[p.index]))
        return out

    def rollouts(self, step: int, prompts: list[Prompt]) -> tuple[list[list[int]], list[rewards.Rollout]]:
        k = self.r.group_size
        contexts = self.prompt_ids(prompts)
        rows = [ids for ids in contexts for _ in range(k)]
        seeds = [sample_seed(self.r.seed, step, n) for n in range(len(rows))]
        self.model.eval()
        codes = self.pipe.sample_image_tokens(rows, cfg_scale=self.r.cfg_scale, temperature=self.r.temperature,
                                              top_k=0, top_p=1.0, seed=seeds)
        images = self.codec.decode(codes)
        outs = [
            rewards.Rollout(prompts[n // k], codes[n], images[n], parse(images[n], self.cfg.world))
            for n in range(len(rows))
        ]
        return rows, outs

    def update(self, step: int, rows: list[list[int]], codes: torch.Tensor, advantages: torch.Tensor) -> dict:
        r = self.r
        dev = torch.device(r.device)
        ids, mask, starts = (x.to(dev) for x in grpo.build_rows(rows, codes, self.layout))
        advantages = advantages.to(dev)
        guided = r.cfg_scale != 1
        if guided:  # the sampler drew from the guided distribution: score the codes under it too
            twins = [uncond_prompt(p, self.layout) for p in rows]
            ids_u, mask_u, starts_u = (x.to(dev) for x in grpo.build_rows(twins, codes, self.layout))
        n = ids.shape[0]

        def lp(m, sel):
            unc = (ids_u[sel], mask_u[sel], starts_u[sel]) if guided else None
            return grpo.image_logprobs(m, self.layout, ids[sel], mask[sel], starts[sel], temperature=r.temperature,
                                       chunk=r.logprob_chunk, uncond=unc, cfg_scale=r.cfg_scale)

        every = torch.arange(n, device=dev)
        # with one optimizer step per batch the policy is still the sampler: old log-probs = current
        one_step = r.updates_per_batch == 1 and r.minibatch_size >= n
        self.model.train()
        with torch.no_grad():
            old = None if one_step else lp(self.model, every)
            ref = lp(self.reference, every) if self.reference is not None else None
        parts_log = []
        for epoch in range(r.updates_per_batch):
            order = torch.randperm(n, generator=_generator("rl-minibatch", r.seed, step, epoch)).to(dev)
            for s in range(0, n, r.minibatch_size):
                sel = order[s : s + r.minibatch_size]
                logp = lp(self.model, sel)
                parts = grpo.grpo_loss(
                    logp, logp.detach() if one_step else old[sel], advantages[sel], clip_eps=r.clip_eps,
                    beta=r.beta, ref_logp=ref[sel] if ref is not None else None,
                )
                self.optimizer.zero_grad(set_to_none=True)
                parts.loss.backward()
                if r.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(self.model.parameters(), r.grad_clip)
                self.optimizer.step()
                parts_log.append((len(sel), parts))
        total = sum(m for m, _ in parts_log)
        avg = lambda f: sum(m * f(p) for m, p in parts_log) / total  # noqa: E731
        return {"loss": avg(lambda p: float(p.loss.detach())), "policy": avg(lambda p: p.policy), "kl": avg(lambda p: p.kl),
                "clip_fraction": avg(lambda p: p.clip_fraction), "ratio": avg(lambda p: p.ratio_mean)}

    def step(self) -> dict:
        r, st = self.r, self.state
        t0 = time.perf_counter()
        prompts = draw_prompts(self.cfg.world, list(r.tasks), r.seed, st.prompt_position, r.prompts_per_step,
                               r.knowledge_fraction)
        rows, outs = self.rollouts(st.step, prompts)
        totals, comps = rewards.score(outs, self.weights, self.ctx)
        reward = torch.tensor(totals, dtype=torch.float32).view(len(prompts), r.group_size)
        adv = grpo.group_advantages(reward, scale=r.scale_rewards).reshape(-1)
        t1 = time.perf_counter()
        lr = self.scheduler.get_last_lr()[0]
        stats = self.update(st.step, rows, torch.stack([o.codes for o in outs]), adv)
        self.scheduler.step()
        t2 = time.perf_counter()

        st.step += 1
        st.prompt_position += len(prompts)
        st.samples += len(outs)
        st.train_time += t2 - t0
        row = {"step": st.step, "lr": lr, "reward": float(np.mean(totals)),
               "zero_signal_groups": float((reward.std(1) == 0).float().mean()),
               "sample_s": round(t1 - t0, 3), "update_s": round(t2 - t1, 3), **stats}
        for t in r.tasks:
            idx = [i for i, o in enumerate(outs) if o.prompt.task == t]
            if not idx:
                continue
            row[f"reward_{t}"] = float(np.mean([totals[i] for i in idx]))
            for name in sorted(n for n, w in self.weights[t].items() if w):
                row[f"{t}_{name}"] = float(np.mean([comps[i][name] for i in idx]))
        st.history.append(row)
        return row

    def save(self) -> None:
        save_checkpoint(self.run_dir, self.state, self.model, self.optimizer, self.scheduler, self.r.keep_checkpoints)
        write_curve(self.state.history, self.columns, Path(self.r.plot))

    # ------------------------------------------------------------------ the run

    def train(self, stop_after: int | None = None) -> dict:
        r = self.r
        t_start = time.perf_counter()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.resume()
        bar = None
        if self.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=r.steps, initial=self.state.step, desc="rl", unit="step")
        stopped = "done"
        while self.state.step < r.steps:
            row = self.step()
            if bar is not None:
                bar.update(1)
                bar.set_postfix(reward=f"{row['reward']:.3f}", kl=f"{row['kl']:.4f}")
            if self.state.step % r.log_every == 0:
                log.info("step %d reward %.4f kl %.5f loss %.4f", self.state.step, row["reward"], row["kl"], row["loss"])
            if self.state.step >= r.steps:
                break
            if stop_after is not None and self.state.step >= stop_after:
                stopped = "stop_after"
                break
            if r.time_limit_min and time.perf_counter() - t_start > 60 * r.time_limit_min:
                stopped = "time_limit"
                log.warning("time limit of %.1f min reached at step %d of %d", r.time_limit_min, self.state.step, r.steps)
                break
            if self.state.step % r.checkpoint_every == 0:
                self.save()
        if bar is not None:
            bar.close()
        self.save()
        if stopped == "stop_after":
            return {"stopped": stopped, "step": self.state.step, "run_dir": str(self.run_dir)}
        metrics = self.metrics(stopped)
        self.export(metrics)
        atomic_write_json(r.metrics, metrics)
        return metrics

    def metrics(self, stopped: str) -> dict:
        h, r = self.state.history, self.r
        window = max(1, min(10, len(h) // 4))  # first and last quarter (up to 10 steps) of the curve

        def span(key: str, rows: list[dict]) -> float | None:
            vals = [x[key] for x in rows if x.get(key) is not None]
            return float(np.mean(vals)) if vals else None

        keys = ["reward"] + [c for c in self.columns if c.startswith("reward_") or c.split("_", 1)[0] in r.tasks]
        rewards_summary = {k: {"first": span(k, h[:window]), "last": span(k, h[-window:])} for k in keys}
        for v in rewards_summary.values():
            v["delta"] = None if v["first"] is None or v["last"] is None else v["last"] - v["first"]
        return {
            "steps": self.state.step,
            "stopped": stopped,
            "tasks": list(r.tasks),
            "seed": r.seed,
            "group_size": r.group_size,
            "prompts_per_step": r.prompts_per_step,
            "beta": r.beta,
            "samples": self.state.samples,
            "train_seconds": round(self.state.train_time, 2),
            "samples_per_s": round(self.state.samples / max(self.state.train_time, 1e-9), 2),
            "window_steps": window,
            "rewards": rewards_summary,
            "kl_final": span("kl", h[-window:]),
            "clip_fraction_mean": span("clip_fraction", h),
            "codec": self.codec.kind,
            "base": self.base_id,
            "run": self.run_dir.name,
        }

    def export(self, metrics: dict) -> Path:
        out = Path(self.r.output)
        manifest = {k: v for k, v in self.manifest.items() if k not in ("format", "vocab_layout")}
        manifest["visual_tokenizer"] = self._tokenizer_reference(out)
        manifest["rl"] = {
            "base": self.base_id,
            "config": self.r.model_dump(mode="json"),
            "steps": self.state.step,
            "samples": self.state.samples,
            "rewards": metrics["rewards"],
            "kl_final": metrics["kl_final"],
            "run": self.run_dir.name,
        }
        self.model.config.use_cache = True
        try:
            export_model(self.model, self.tok, self.layout, manifest, out)
        finally:
            self.model.config.use_cache = False
        return out

    def _tokenizer_reference(self, out: Path):
        """The base manifest's visual tokenizer reference; a path that only resolved relative to the
        base dir is rewritten relative to the output dir, so both dirs find the same tokenizer."""
        ref = self.manifest.get("visual_tokenizer")
        if self.codec.kind == "oracle" or ref is None:
            return ref
        key = ("path" if "path" in ref else "dir") if isinstance(ref, dict) else None
        path = Path(ref[key] if key else ref)
        if path.is_absolute() or path.is_dir():
            return ref  # absolute, or relative to the working dir: the same from any model dir
        vt = (Path(self.r.base) / path).resolve()
        rel = os.path.relpath(vt, out.resolve())
        return {**ref, key: rel} if key else rel


def train_rl(cfg: ArmConfig, *, stop_after: int | None = None, progress: bool = True) -> dict:
    """Train (resuming if a checkpoint of this run exists) and export `rl.output`. Returns the metrics.

    stop_after: stop with a checkpoint once this many steps are done in total, without exporting.
    """
    torch.manual_seed(cfg.rl.seed)
    return GRPOTrainer(cfg, progress=progress).train(stop_after=stop_after)

