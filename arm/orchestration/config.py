"""How Prefect runs the resumable stages: retries and a timeout per attempt (params.yaml `orchestration:`).

Tokenizer training, tokenize, pretraining and RL resume exactly from their last checkpoint (or
shard), so a retry after a crash, a preempted node or a hung collective costs only the work since
then. The timeout is per attempt: it bounds the time lost to a hang, and a run longer than it
continues in the next attempt. None of these change what a stage writes, so no DVC stage tracks them.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from arm.configbase import Strict

HOUR = 3600.0


class TaskOptions(Strict):
    """Prefect task options (`Task.with_options`) of one stage."""

    retries: int = Field(2, ge=0)
    retry_delay_seconds: float = Field(60.0, ge=0)
    timeout_seconds: float | None = Field(None, gt=0)  # None: no limit


class OrchestrationConfig(Strict):
    train_tokenizer: TaskOptions = TaskOptions(timeout_seconds=12 * HOUR)
    tokenize: TaskOptions = TaskOptions(timeout_seconds=12 * HOUR)
    pretrain: TaskOptions = TaskOptions(timeout_seconds=48 * HOUR)
    rl: TaskOptions = TaskOptions(timeout_seconds=24 * HOUR)

    def task_options(self, stage: str) -> dict[str, Any]:
        """Keyword arguments for `task.with_options` of `stage`'s task."""
        if stage not in type(self).model_fields:
            raise KeyError(f"orchestration: no task options for stage {stage!r}; "
                           f"known: {sorted(type(self).model_fields)}")
        return getattr(self, stage).model_dump()
