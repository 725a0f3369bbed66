"""The RL stage: GRPO post-training of a model dir on T2I and editing prompts of the shapes world.

Each step draws `prompts_per_step` prompts (tasks alternating over `rl.tasks`), samples
`group_size` images per prompt with the sampling engine (KV cache, grammar-constrained image
spans; no grad), decodes and scores them with the reward registry, and takes policy-gradient
steps on the GRPO objective (arm.rl.grpo). Everything random is a function of (rl.seed, step):
prompts of the stream "rl:<seed>:<i>", one sampling seed per sample, the minibatch order.

The loop runs on `accelerate` (arm.train.accel) with the same code on one CPU process and on
GPU workers: with `rl.nproc` processes each samples and scores its share of the step's prompts
(whole groups, so advantages stay per group) and the update averages gradients over all of them;
`rl.zero_stage: 3` shards the policy and the reference with DeepSpeed (gathered whole once per
step for sampling), `rl.precision: bf16` keeps fp32 master weights, `rl.lora` trains PEFT
adapters with the adapter-free base as the KL reference.

A run dir (checkpoints/rl/<fingerprint>) is keyed by the params that shape the curve and the
base model's weights; a checkpoint is an accelerate `save_state` (policy, optimizer, scheduler,
every rank's RNG) plus state.json with the prompt position and curve, so an interrupted run
resumes with the same rewards and losses. The result is exported like arm-base (safetensors,
tokenizer, vocab_layout.json, manifest.json + `rl`), adapters merged.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from arm.config import ArmConfig
from arm.curves import CurveLog
from arm.data.oracle import parse
from arm.io import atomic_write_json, sha256_file
from arm.model.config import SamplingConfig
from arm.model.io import export_model, load_model as load_model_dir
from arm.rl import grpo, rewards
from arm.rl.codec import load_codec
from arm.rl.prompts import Prompt, draw_prompts
from arm.sample.pipeline import ArmPipeline, uncond_prompt
from arm.text.formats import format_prompt
from arm.train import accel

log = logging.getLogger("arm.rl")

# Fields that change where results go or how a run is watched, not what it computes.
_BOOKKEEPING = {"output", "checkpoints", "metrics", "plot", "log_every", "checkpoint_every", "keep_checkpoints",
                "time_limit_min", "threads", "sample_batch", "logprob_chunk", "device", "activation_checkpointing"}


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


# ----------------------------------------------------------------------------- schedule


def scheduler_for(optimizer, r):
    """transformers' schedules: linear warm-up, then flat or a cosine/linear decay to min_lr_ratio."""
    from transformers import get_scheduler

    if r.schedule == "constant":
        return get_scheduler("constant_with_warmup", optimizer, num_warmup_steps=r.warmup_steps)
    return get_scheduler("warmup_stable_decay", optimizer, num_warmup_steps=r.warmup_steps, num_training_steps=r.steps,
                         scheduler_specific_kwargs={"num_stable_steps": 0, "num_decay_steps": r.steps - r.warmup_steps,
                                                    "decay_type": r.schedule, "min_lr_ratio": r.min_lr_ratio})


# ----------------------------------------------------------------------------- curves


def curve_columns(cfg: ArmConfig) -> list[str]:
    cols = ["step", "lr", "reward", *[f"reward_{t}" for t in cfg.rl.tasks]]
    for t in cfg.rl.tasks:
        cols += [f"{t}_{n}" for n, w in sorted(cfg.rl.rewards[t].items()) if w]
    return cols + ["loss", "policy", "kl", "clip_fraction", "ratio", "zero_signal_groups", "sample_s", "update_s"]


# ----------------------------------------------------------------------------- the trainer


class GRPOTrainer:
    def __init__(self, cfg: ArmConfig, progress: bool = True):
        self.cfg, self.r = cfg, cfg.rl
        r = self.r
        self.progress = progress
        if r.threads:
            torch.set_num_threads(r.threads)
        base = Path(r.base)
        if not base.is_dir():
            raise FileNotFoundError(f"rl.base {base}: model dir not found (run `arm pretrain` first)")
        self.acc = accel.build_accelerator(device=r.device, precision=r.precision, zero_stage=r.zero_stage,
                                           grad_clip=r.grad_clip, micro_batch=r.minibatch_size // r.nproc)
        if self.acc.num_processes != r.nproc:
            raise RuntimeError(f"rl.nproc is {r.nproc} but {self.acc.num_processes} processes were launched")
        # accelerate names a process's CPU "cpu:<local rank>" in a process group; it is the one CPU
        self.device = torch.device("cpu") if self.acc.device.type == "cpu" else self.acc.device
        self.zero3 = accel.is_zero3(self.acc)
        self.base_id = base_identity(base)
        # ZeRO-3 bf16 keeps its own fp32 master copy: load the shards in bf16. Otherwise the
        # parameters themselves are the fp32 master weights (autocast does the bf16 compute).
        dtype = torch.bfloat16 if self.zero3 and r.precision == "bf16" else torch.float32
        lm, self.tok, self.layout, self.manifest = load_model_dir(base, device=self.device, dtype=dtype)
        self.codec = load_codec(base, self.manifest, cfg.world, device=str(self.device))
        if self.codec.codebook_size != self.layout.codebook_size or tuple(self.codec.grid) != tuple(self.layout.grid):
            raise ValueError(
                f"{base}: visual tokenizer ({self.codec.codebook_size} codes, grid {self.codec.grid}) does not match "
                f"the vocabulary layout ({self.layout.codebook_size} codes, grid {self.layout.grid})"
            )
        rewards.check_weights(r.rewards, r.tasks, self.codec)
        self.weights = {t: dict(r.rewards[t]) for t in r.tasks}
        self.ctx = rewards.RewardContext(cfg.world, self.codec, r.pq_tolerance)
        lm.config.use_cache = False
        # beta = 0 means no KL term, so no second copy of the weights is ever held; with LoRA the
        # reference is the same weights with the adapters switched off
        self.reference = None
        if r.beta > 0 and r.lora is None:
            self.reference = self._reference(base, lm, dtype)
        if r.lora is not None:
            from peft import LoraConfig, get_peft_model

            lm = get_peft_model(lm, LoraConfig(r=r.lora.r, lora_alpha=r.lora.alpha, lora_dropout=r.lora.dropout,
                                               target_modules=list(r.lora.target_modules)))
        if r.activation_checkpointing:
            lm.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        policy = grpo.ImageLogprobs(lm, self.layout, r.temperature, r.logprob_chunk, r.cfg_scale)
        optimizer = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad],
                                      lr=r.lr, betas=r.betas, weight_decay=r.weight_decay)
        self.policy, self.optimizer = self.acc.prepare(policy, optimizer)
        # stepped once per RL step, by this loop, on every backend: handed to accelerate it would
        # step once per process (DDP) or once per optimizer step (DeepSpeed); saved with the state
        self.scheduler = scheduler_for(optimizer, r)
        self.acc.register_for_checkpointing(self.scheduler)
        self.lm = self.acc.unwrap_model(self.policy).lm
        sampling = SamplingConfig(device=str(self.device), batch_size=r.sample_batch, cfg_scale=r.cfg_scale,
                                  temperature=r.temperature, top_k=0, top_p=1.0)
        self.pipe = ArmPipeline(self.lm, self.tok, self.layout, None, sampling)
        self.run_dir = Path(r.checkpoints) / fingerprint(cfg, self.base_id)[:16]
        self.state = RLState()
        self.columns = curve_columns(cfg)

    def _reference(self, base: Path, lm, dtype: torch.dtype):
        """The frozen KL reference: a copy of the base; under ZeRO-3 loaded as shards and run by
        an inference-only DeepSpeed engine, so it is sharded like the policy."""
        r = self.r
        if not self.zero3:
            ref = copy.deepcopy(lm).eval().requires_grad_(False)
            return grpo.ImageLogprobs(ref, self.layout, r.temperature, r.logprob_chunk, r.cfg_scale)
        import deepspeed

        ref, *_ = load_model_dir(base, device=self.device, dtype=dtype)
        ref.config.use_cache = False
        module = grpo.ImageLogprobs(ref.requires_grad_(False), self.layout, r.temperature, r.logprob_chunk, r.cfg_scale)
        ds = copy.deepcopy(self.acc.state.deepspeed_plugin.deepspeed_config)
        ds.pop("optimizer", None)
        ds.pop("scheduler", None)
        engine, *_ = deepspeed.initialize(model=module, config=ds)
        engine.eval()  # DeepSpeedEngine.eval returns None
        return engine

    # ------------------------------------------------------------------ pieces

    def resume(self) -> bool:
        found = accel.latest(self.run_dir)
        if found is None:
            return False
        self.acc.load_state(str(found[0]))
        self.state = RLState(**found[1])
        log.info("resumed %s at step %d", found[0], self.state.step)
        return True

    def local_prompts(self, prompts: list[Prompt]) -> tuple[list[Prompt], int]:
        """This process's contiguous share of the step's prompts and the global index of its first."""
        per = len(prompts) // self.acc.num_processes
        first = self.acc.process_index * per
        return prompts[first : first + per], first

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

    def rollouts(self, step: int, prompts: list[Prompt], first: int = 0) -> tuple[list[list[int]], list[rewards.Rollout]]:
        """K samples of each prompt; sample n of the step (n counted over all processes' prompts,
        from `first` * K here) gets its own seed, so rollouts do not depend on the process count."""
        k = self.r.group_size
        contexts = self.prompt_ids(prompts)
        rows = [ids for ids in contexts for _ in range(k)]
        seeds = [sample_seed(self.r.seed, step, first * k + n) for n in range(len(rows))]
        self.policy.eval()
        with accel.gathered(self.acc, self.lm), self.acc.autocast():
            codes = self.pipe.sample_image_tokens(rows, cfg_scale=self.r.cfg_scale, temperature=self.r.temperature,
                                                  top_k=0, top_p=1.0, seed=seeds)
        images = self.codec.decode(codes)
        outs = [
            rewards.Rollout(prompts[n // k], codes[n], images[n], parse(images[n], self.cfg.world))
            for n in range(len(rows))
        ]
        return rows, outs

    def _logprobs(self, model, ids, mask, starts, unc, sel) -> torch.Tensor:
        u = tuple(x[sel] for x in unc) if unc is not None else None
        return model(ids[sel], mask[sel], starts[sel], u)

    def _frozen_logprobs(self, model, batch, n: int, mb: int, adapters_off: bool = False) -> torch.Tensor:
        """No-grad log-probs of all n local rows, a minibatch at a time (bounded activations)."""
        off = self.lm.disable_adapter() if adapters_off else contextlib.nullcontext()
        with torch.no_grad(), off:
            return torch.cat([self._logprobs(model, *batch, torch.arange(s, min(n, s + mb), device=self.device))
                              for s in range(0, n, mb)])

    def update(self, step: int, rows: list[list[int]], codes: torch.Tensor, advantages: torch.Tensor) -> dict:
        r = self.r
        dev = self.device
        ids, mask, starts = (x.to(dev) for x in grpo.build_rows(rows, codes, self.layout))
        advantages = advantages.to(dev)
        unc = None
        if r.cfg_scale != 1:  # the sampler drew from the guided distribution: score the codes under it too
            twins = [uncond_prompt(p, self.layout) for p in rows]
            unc = tuple(x.to(dev) for x in grpo.build_rows(twins, codes, self.layout))
        batch = (ids, mask, starts, unc)
        n, mb = ids.shape[0], r.minibatch_size // self.acc.num_processes
        # with one optimizer step per batch the policy is still the sampler: old log-probs = current
        one_step = r.updates_per_batch == 1 and mb >= n
        self.policy.train()
        old = None if one_step else self._frozen_logprobs(self.policy, batch, n, mb)
        ref = None
        if r.beta > 0:
            ref = (self._frozen_logprobs(self.policy, batch, n, mb, adapters_off=True) if r.lora is not None
                   else self._frozen_logprobs(self.reference, batch, n, mb))
        parts_log = []
        for epoch in range(r.updates_per_batch):
            g = _generator("rl-minibatch", r.seed, step, epoch, self.acc.process_index)
            order = torch.randperm(n, generator=g).to(dev)
            for s in range(0, n, mb):
                sel = order[s : s + mb]
                logp = self._logprobs(self.policy, *batch, sel)
                parts = grpo.grpo_loss(
                    logp, logp.detach() if one_step else old[sel], advantages[sel], clip_eps=r.clip_eps,
                    beta=r.beta, ref_logp=ref[sel] if ref is not None else None,
                )
                self.acc.backward(parts.loss)  # under DeepSpeed this also steps (clipping in its config)
                if r.grad_clip > 0 and not self.zero3:
                    self.acc.clip_grad_norm_(self.policy.parameters(), r.grad_clip)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                parts_log.append((len(sel), parts))
        total = sum(m for m, _ in parts_log)
        avg = lambda f: sum(m * f(p) for m, p in parts_log) / total  # noqa: E731
        local = torch.tensor([avg(lambda p: float(p.loss.detach())), avg(lambda p: p.policy), avg(lambda p: p.kl),
                              avg(lambda p: p.clip_fraction), avg(lambda p: p.ratio_mean)], dtype=torch.float64)
        mean = self.acc.reduce(local.to(dev), reduction="mean").cpu().tolist()  # equal row counts per process
        return dict(zip(("loss", "policy", "kl", "clip_fraction", "ratio"), mean))

    def _gather_scores(self, outs: list[rewards.Rollout], totals: list[float], comps: list[dict]):
        """Every process's (task, total, components) per sample, in global sample order."""
        names = sorted({n for w in self.weights.values() for n, v in w.items() if v})
        tasks = list(self.r.tasks)
        local = torch.tensor([[tasks.index(o.prompt.task), t, *[c.get(n, float("nan")) for n in names]]
                              for o, t, c in zip(outs, totals, comps)], dtype=torch.float64, device=self.device)
        table = self.acc.gather(local).cpu()
        return [tasks[int(i)] for i in table[:, 0]], table[:, 1], {n: table[:, 2 + j] for j, n in enumerate(names)}

    def step(self) -> dict:
        r, st = self.r, self.state
        t0 = time.perf_counter()
        prompts = draw_prompts(self.cfg.world, list(r.tasks), r.seed, st.prompt_position, r.prompts_per_step,
                               r.knowledge_fraction)
        mine, first = self.local_prompts(prompts)
        rows, outs = self.rollouts(st.step, mine, first)
        totals, comps = rewards.score(outs, self.weights, self.ctx)
        reward = torch.tensor(totals, dtype=torch.float32).view(len(mine), r.group_size)
        adv = grpo.group_advantages(reward, scale=r.scale_rewards).reshape(-1)
        t1 = time.perf_counter()
        lr = self.scheduler.get_last_lr()[0]
        stats = self.update(st.step, rows, torch.stack([o.codes for o in outs]), adv)
        self.scheduler.step()
        t2 = time.perf_counter()
        tasks, all_totals, all_comps = self._gather_scores(outs, totals, comps)

        st.step += 1
        st.prompt_position += len(prompts)
        st.samples += len(tasks)
        st.train_time += t2 - t0
        groups = all_totals.view(len(prompts), r.group_size)
        row = {"step": st.step, "lr": lr, "reward": float(all_totals.mean()),
               "zero_signal_groups": float((groups.std(1) == 0).float().mean()),
               "sample_s": round(t1 - t0, 3), "update_s": round(t2 - t1, 3), **stats}
        for t in r.tasks:
            idx = [i for i, task in enumerate(tasks) if task == t]
            if not idx:
                continue
            row[f"reward_{t}"] = float(all_totals[idx].mean())
            for name in sorted(n for n, w in self.weights[t].items() if w):
                row[f"{t}_{name}"] = float(all_comps[name][idx].mean())
        st.history.append(row)
        return row

    def save(self) -> None:
        accel.save_state(self.acc, self.run_dir, self.state.step, self.r.keep_checkpoints, meta=asdict(self.state))
        if self.curve is not None:
            self.curve.flush()

    # ------------------------------------------------------------------ the run

    def train(self, stop_after: int | None = None) -> dict:
        r = self.r
        t_start = time.perf_counter()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.resume()
        self.curve = CurveLog(r.plot, self.state.history) if self.acc.is_main_process else None
        bar = None
        if self.progress and self.acc.is_main_process:
            from arm.progress import progress_bar

            bar = progress_bar("rl", r.steps, initial=self.state.step, unit="step", logger=log)
        stopped = "done"
        while self.state.step < r.steps:
            row = self.step()
            if self.curve is not None:
                self.curve.log(row)
            if bar is not None:
                bar.set_postfix(reward=f"{row['reward']:.3f}", kl=f"{row['kl']:.4f}")
                bar.update(1)
            if self.state.step % r.log_every == 0 and self.acc.is_main_process:
                log.info("step %d reward %.4f kl %.5f loss %.4f", self.state.step, row["reward"], row["kl"], row["loss"])
            if self.state.step >= r.steps:
                break
            if stop_after is not None and self.state.step >= stop_after:
                stopped = "stop_after"
                break
            # one decision for every process (each has its own clock)
            over = bool(r.time_limit_min and time.perf_counter() - t_start > 60 * r.time_limit_min)
            if self.acc.reduce(torch.tensor([float(over)], device=self.device), reduction="sum").item() > 0:
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
        if self.acc.is_main_process:
            atomic_write_json(r.metrics, metrics)
        self.acc.wait_for_everyone()
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

    def export_weights(self):
        """The trained policy as a plain causal LM on rank 0 (None elsewhere): shards consolidated,
        LoRA adapters merged into the base weights."""
        state = self.acc.get_state_dict(self.policy)  # a collective under ZeRO-3
        if not self.acc.is_main_process:
            return None
        state = {k.removeprefix("lm."): v for k, v in state.items() if k.startswith("lm.")}
        config = copy.deepcopy(self.acc.unwrap_model(self.policy).lm.config)
        from transformers import AutoModelForCausalLM
        from transformers.integrations import unset_hf_deepspeed_config

        # models built from here on are plain, on this rank alone: under the ZeRO-3 config they
        # would be partitioned by a zero.Init that waits for every rank
        unset_hf_deepspeed_config()

        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
        if self.r.lora is None:
            model.load_state_dict(state, strict=True, assign=True)
        else:
            from peft import PeftConfig, get_peft_model

            peft_cfg = self.lm.peft_config["default"]
            model = get_peft_model(model, PeftConfig.from_peft_type(**peft_cfg.to_dict()))
            model.load_state_dict(state, strict=True, assign=True)
            model = model.merge_and_unload()
        if config.tie_word_embeddings:
            model.tie_weights()
        return model

    def export(self, metrics: dict) -> Path | None:
        out = Path(self.r.output)
        model = self.export_weights()
        if model is None:
            return None
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
        base_dtype = self.acc.unwrap_model(self.policy).lm.config.dtype
        export_model(model, self.tok, self.layout, manifest, out, dtype=_torch_dtype(base_dtype, self.r.base))
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


def _torch_dtype(loaded, base: str) -> torch.dtype:
    """The dtype the base model dir was saved in (the export keeps it)."""
    saved = json.loads((Path(base) / "config.json").read_text()).get("dtype") or loaded
    return getattr(torch, str(saved).removeprefix("torch.")) if not isinstance(saved, torch.dtype) else saved


def train_rl(cfg: ArmConfig, *, stop_after: int | None = None, progress: bool = True) -> dict:
    """Train (resuming if a checkpoint of this run exists) and export `rl.output`. Returns the metrics.

    stop_after: stop with a checkpoint once this many steps are done in total, without exporting.
    """
    torch.manual_seed(cfg.rl.seed)
    return GRPOTrainer(cfg, progress=progress).train(stop_after=stop_after)



def train_rl_multiprocess(params: str, preset: str | None, overrides: list[str], nproc: int,
                          stop_after: int | None = None) -> dict:
    """Run the stage in `nproc` local processes via torchrun; returns rank 0's metrics."""
    from arm.config import load_config
    from arm.train import dist

    cfg = load_config(params, preset, [*overrides, f"rl.nproc={nproc}"])
    dist.torchrun("arm.rl.launch", nproc, params, preset, [*overrides, f"rl.nproc={nproc}"],
                  extra=["--stop-after", str(stop_after)] if stop_after else None)
    if stop_after and stop_after < cfg.rl.steps:
        return {"stopped": "stop_after", "step": stop_after, "run_dir": cfg.rl.checkpoints}
    return json.loads(Path(cfg.rl.metrics).read_text())
