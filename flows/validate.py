"""Prefect flow of the validate stage: a thin wrapper around arm.data.validate.validate.

A failing suite raises DataValidationError, which fails the flow (and stops a pipeline)."""

from __future__ import annotations

from prefect import flow, get_run_logger, task

from arm.config import load_config
from arm.data.validate import validate


@task(name="validate")
def validate_task(params: str, preset: str | None, overrides: list[str] | None) -> dict:
    cfg = load_config(params, preset, overrides)
    return validate(cfg, logger=get_run_logger())


@flow(name="validate")
def validate_flow(params: str = "params.yaml", preset: str | None = None, overrides: list[str] | None = None) -> dict:
    return validate_task(params, preset, overrides)


if __name__ == "__main__":
    validate_flow()
