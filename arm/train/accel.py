"""`accelerate` for the training loops other than pretraining (tokenizer training, RL), the same
switches on CPU and GPUs.

One `Accelerator` per process: DeepSpeed ZeRO-3 when asked (bf16 with fp32 master weights and fp32
gradient accumulation, as pretraining), else DDP across processes / one plain process, with
autocast for bf16 over fp32 parameters. Checkpoints are `save_state` dirs (model, optimizer,
scheduler, every rank's RNG) written under a temporary tag and published by rank 0 through the
run dir's `latest` file, so a crash mid-save keeps the previous checkpoint.

accelerate only enables DeepSpeed on an accelerator device; on CPU the process group is given
explicitly (gloo), which is how CI runs the ZeRO-3 path (DESIGN §7).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import torch

from arm.device import resolve_device
from arm.io import atomic_write_json, atomic_write_text
from arm.train import checkpoint as ckpt


def build_accelerator(*, device: str, precision: str, zero_stage: int = 0, grad_clip: float = 0.0, micro_batch: int = 1,
                      find_unused_parameters: bool = False):
    """The process's Accelerator. `micro_batch`: rows per process per optimizer step (DeepSpeed's
    config asks for it; the loops call backward once per step). `find_unused_parameters`: DDP
    tolerates steps that leave parts of the model out (the tokenizer's decoder fine-tune).

    Accelerate's state is a per-process singleton that refuses a second precision setting; a
    process (a test session, the GPU smoke) that trains twice starts each run from a fresh one,
    keeping the process group. Schedulers are stepped by the loops themselves, once per their step
    (handed to accelerate they would step once per process)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from accelerate.utils import DeepSpeedPlugin, DistributedDataParallelKwargs, InitProcessGroupKwargs

    AcceleratorState._reset_state(reset_partial_state=True)
    # an earlier DeepSpeed Accelerator of this process leaves this flag, which turns the next one into DeepSpeed
    os.environ.pop("ACCELERATE_USE_DEEPSPEED", None)
    cuda = resolve_device(device).type == "cuda"  # auto, cpu, cuda[:N] as everywhere (arm.device)
    if zero_stage == 0:
        # one process on CPU, DDP over gloo/nccl with several; bf16 = autocast over fp32 weights
        return Accelerator(cpu=not cuda, mixed_precision="bf16" if precision == "bf16" else "no",
                           kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=find_unused_parameters)],
                           step_scheduler_with_optimizer=False)
    from arm.train.dist import env

    env()  # outside torchrun: a world of one (accelerate's DeepSpeed path reads LOCAL_RANK)
    bf16 = precision == "bf16"
    ds = {
        "zero_optimization": {"stage": 3, "stage3_gather_16bit_weights_on_model_save": True},
        "bf16": {"enabled": bf16},
        # DeepSpeed accumulates in fp32 only inside a ZeRO optimizer; stage 3 is one
        "data_types": {"grad_accum_dtype": "fp32"} if bf16 else {},
        "gradient_clipping": grad_clip,
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": 1,
    }
    plugin = DeepSpeedPlugin(hf_ds_config=ds, zero3_init_flag=True)
    backend = InitProcessGroupKwargs(backend="nccl" if cuda else "gloo")
    return Accelerator(deepspeed_plugin=plugin, kwargs_handlers=[backend], step_scheduler_with_optimizer=False)


def is_zero3(accelerator) -> bool:
    plugin = accelerator.state.deepspeed_plugin
    return plugin is not None and plugin.zero_stage == 3


@contextlib.contextmanager
def gathered(accelerator, module: torch.nn.Module) -> Iterator[None]:
    """Every parameter of `module` whole on this process (ZeRO-3 shards gathered once, not per
    forward), for a no-grad stretch such as sampling rollouts; a no-op without ZeRO-3."""
    if not is_zero3(accelerator):
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(list(module.parameters())):
        yield


META_FILE = "state.json"  # the loop's own position (step, curve, ...) inside a checkpoint dir


def save_state(accelerator, run_dir: Path, step: int, keep: int, meta: dict) -> Path:
    """`save_state` into a temporary tag dir, `meta` written last into it, then rank 0 renames it
    into place and points `latest` at it: a crash mid-save leaves the previous checkpoint whole."""
    tag = ckpt.tag_name(step)
    final, tmp, old = run_dir / tag, run_dir / f".{tag}.tmp", run_dir / f".{tag}.old"
    if accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        for stale in run_dir.glob(".*.tmp"):  # this save's and any a crash left behind
            shutil.rmtree(stale, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))  # rank 0 the model, optimizer, scheduler; every rank its RNG
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        atomic_write_json(tmp / META_FILE, meta)
        if final.exists():  # the same step saved again (a resumed run's last save): swap it out
            shutil.rmtree(old, ignore_errors=True)
            final.rename(old)
        tmp.rename(final)
        atomic_write_text(run_dir / ckpt.LATEST, tag + "\n")
        shutil.rmtree(old, ignore_errors=True)
        ckpt.prune(run_dir, keep)
    accelerator.wait_for_everyone()
    return final


def latest(run_dir: Path) -> tuple[Path, dict] | None:
    """(dir, meta) of the newest complete checkpoint of `run_dir`, or None; restore its tensors
    with `accelerator.load_state(dir)`."""
    tag = ckpt.latest_tag(run_dir)
    if not tag:
        return None
    for d in (run_dir / tag, run_dir / f".{tag}.old"):  # .old: killed mid-swap of a re-saved step
        try:
            return d, json.loads((d / META_FILE).read_text())
        except (OSError, ValueError):
            continue
    return None
