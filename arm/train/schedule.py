"""Learning-rate schedules as multipliers of the peak rate (for torch's LambdaLR)."""

from __future__ import annotations

import math
from collections.abc import Callable


def lr_multiplier(schedule: str, warmup: int, total: int, min_ratio: float) -> Callable[[int], float]:
    """Linear warm-up over `warmup` optimizer steps, then cosine/linear decay to min_ratio (or flat)."""
    if schedule not in ("cosine", "linear", "constant"):
        raise ValueError(f"unknown schedule {schedule!r}")

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        shape = 0.5 * (1 + math.cos(math.pi * progress)) if schedule == "cosine" else 1 - progress
        return min_ratio + (1 - min_ratio) * shape

    return f
