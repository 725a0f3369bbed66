"""Where an inference model runs and in what precision: the one place that turns a config's
`device` and `dtype` names into torch objects. Sampling (`arm generate/describe/edit`), `arm
evaluate`, serving and RL rollouts all load through `ArmPipeline.from_pretrained` or call these.

`auto` is CUDA when torch sees a GPU, else the CPU. A 16-bit dtype is a GPU memory choice (the
`7b` preset samples in bf16: half the weights and KV cache of fp32); when `auto` lands on the
CPU it falls back to float32 and says so — the CPU presets' precision, and the fast one on CPUs
without native bf16 matmuls (a [16x512]@[512x2048] matmul took 68 ms in bf16 vs 0.7 ms in fp32
on this project's CI CPU). An explicit `cpu` keeps the dtype asked for.
"""

from __future__ import annotations

import logging

import torch

log = logging.getLogger("arm.device")

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(name: str | torch.device) -> torch.device:
    """`auto`: the current CUDA device when torch sees one, else the CPU; other names as torch reads them.
    A CUDA device torch cannot see is an error here, naming the setting, not at the first `.to()`."""
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r}: torch sees no CUDA device (use 'auto' to fall back to the CPU)")
    return device


def resolve_placement(device: str, dtype: str) -> tuple[torch.device, torch.dtype]:
    """(device, dtype) of an inference model from config names (e.g. `sampling.device/dtype`)."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r}: expected one of {sorted(DTYPES)}")
    where, precision = resolve_device(device), DTYPES[dtype]
    if device == "auto" and where.type == "cpu" and precision != torch.float32:
        log.warning("device auto: no GPU visible, running on the CPU in float32 instead of %s", dtype)
        return where, torch.float32
    return where, precision
