"""Throughput accounting: the machine's measured matmul peak and model FLOPs utilisation (MFU)."""

from __future__ import annotations

import time

import torch


def measured_peak_flops(n: int = 1024, seconds: float = 1.0, dtype: torch.dtype = torch.float32, device: str = "cpu") -> float:
    """FLOP/s of a large square matmul with the current thread settings: the practical peak.

    The best of repeated timings, so a burst of load from other processes lowers it less.
    """
    a = torch.randn(n, n, dtype=dtype, device=device)
    b = torch.randn(n, n, dtype=dtype, device=device)
    torch.matmul(a, b)  # warm-up: thread pool, caches
    best = 0.0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or best == 0.0:
        if device != "cpu":
            torch.cuda.synchronize()
        t = time.perf_counter()
        torch.matmul(a, b)
        if device != "cpu":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t
        best = max(best, 2 * n**3 / dt)
    return best


def peak_flops(device: torch.device, precision: str) -> float:
    """The measured matmul peak of this process's device in the training precision (per process).

    On a GPU the bf16 peak is what MFU is quoted against; on the CPU fp32 is what runs."""
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
    if device.type == "cpu":
        return measured_peak_flops(dtype=torch.float32)
    # 8192^2: large enough to reach the tensor cores' steady state on an H100/H200
    return measured_peak_flops(n=8192, dtype=dtype, device=str(device))


def mfu(tokens_per_s: float, flops_per_token: float, peak_flops: float) -> float:
    return tokens_per_s * flops_per_token / peak_flops if peak_flops > 0 else float("nan")
