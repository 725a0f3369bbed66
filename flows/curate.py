"""Prefect flow of the curate stage: a thin wrapper around arm.data.curate.curate."""

from __future__ import annotations

from prefect import flow, get_run_logger, task

from arm.config import load_config
from arm.data.curate import curate


@task(name="curate")
def curate_task(params: str, preset: str | None, overrides: list[str] | None) -> dict:
    cfg = load_config(params, preset, overrides)
    return curate(cfg, logger=get_run_logger())


@flow(name="curate")
def curate_flow(params: str = "params.yaml", preset: str | None = None, overrides: list[str] | None = None) -> dict:
    return curate_task(params, preset, overrides)


if __name__ == "__main__":
    curate_flow()
