"""End-to-end pipeline: curate → validate → tokenizer → tokenize → pretrain → rl → evaluate → gate → package.

One flow run: DVC says whether a stage is stale; a stale one runs its dvc.yaml command
(`arm <stage> ...`) in this process, so the stage's flow is a subflow of this run on the same
API, then DVC records it in dvc.lock (arm.orchestration.stages). `dvc repro` runs the same
commands from a shell. A failing stage (a rejected gate exits 1) stops the run before the next.
"""

from __future__ import annotations

import contextlib
import shlex
from pathlib import Path
from typing import Literal

from prefect import flow, get_run_logger

from arm.orchestration.artifacts import publish_stages
from arm.orchestration.stages import (PIPELINE_STAGES, clear_outputs, record_stage, select_preset, stage_command,
                                      stage_is_stale)

Stage = Literal[PIPELINE_STAGES]  # the UI's choice list for `until`


class StageFailed(RuntimeError):
    """A stage's `arm` command exited non-zero (it has printed why)."""


def run_arm(args: list[str]) -> None:
    """The `arm` command line in this process (the CLI's own parsing, checks and exit codes)."""
    import typer

    from arm.cli import app

    code = typer.main.get_command(app).main(args, prog_name="arm", standalone_mode=False)
    if code:
        raise StageFailed(f"`arm {shlex.join(args)}` exited {code}")


def run_stage(root: Path, stage: str) -> str:
    """Brings one stage up to date: "skipped" when dvc.lock says it is, else "ran"."""
    logger = get_run_logger()
    if not stage_is_stale(root, stage):
        logger.info("%s: up to date (dvc.lock), skipped", stage)
        return "skipped"
    args = stage_command(root, stage)
    logger.info("%s: arm %s", stage, shlex.join(args))
    clear_outputs(root, stage)
    run_arm(args)
    record_stage(root, stage)
    return "ran"


@flow(name="pipeline")
def pipeline_flow(preset: str | None = None, until: Stage | None = None, root: str = ".") -> dict[str, str]:
    """preset: sets `preset:` in params.yaml first; until: the last stage (default: all); root: the repo."""
    root_path = Path(root).resolve()
    stages = PIPELINE_STAGES[: PIPELINE_STAGES.index(until) + 1] if until else PIPELINE_STAGES
    states: dict[str, str] = {}
    # stage commands use paths relative to the repository, as under `dvc repro`
    with contextlib.chdir(root_path):
        if preset:
            select_preset(root_path / "params.yaml", preset)
        try:
            for stage in stages:
                states[stage] = "failed"
                states[stage] = run_stage(root_path, stage)
        finally:
            publish_stages(states)
    return states


if __name__ == "__main__":
    pipeline_flow()
