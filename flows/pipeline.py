"""End-to-end pipeline: curate → validate → tokenizer → tokenize → pretrain → rl → evaluate → gate → package.

Each stage is a Prefect task that asks DVC whether the stage is stale and reproduces it if so.
The gate stage exits non-zero on a failing model, which stops the flow before `package`.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger, task

from arm.orchestration.stages import PIPELINE_STAGES, reproduce_stage, select_preset, stage_is_stale


@task(name="stage", task_run_name="{stage}")
def run_stage(root: str, stage: str) -> str:
    logger = get_run_logger()
    if not stage_is_stale(Path(root), stage):
        logger.info("%s: up to date (dvc.lock), skipped", stage)
        return "skipped"
    logger.info("%s: running", stage)
    reproduce_stage(Path(root), stage)
    return "ran"


@flow(name="pipeline")
def pipeline_flow(root: str = ".", preset: str | None = None, until: str | None = None) -> dict[str, str]:
    root_path = Path(root).resolve()
    if preset:
        select_preset(root_path / "params.yaml", preset)
    stages = PIPELINE_STAGES[: PIPELINE_STAGES.index(until) + 1] if until else PIPELINE_STAGES
    return {stage: run_stage(str(root_path), stage) for stage in stages}


if __name__ == "__main__":
    pipeline_flow()
