"""Prefect flow of the validate stage: a thin wrapper around arm.data.validate.validate.

A failing suite raises DataValidationError, which fails the flow (and stops a pipeline); the
failed expectations are published as the run's `data-validation-failures` table either way."""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, task

from arm.config import load_config
from arm.data.validate import DataValidationError, validate
from arm.orchestration.artifacts import publish_validation


@task(name="validate")
def validate_task(params: str, preset: str | None, overrides: dict[str, Any] | None) -> dict:
    cfg = load_config(params, preset, overrides)
    return validate(cfg, logger=get_run_logger())


@flow(name="validate")
def validate_flow(params: str = "params.yaml", preset: str | None = None,
                  overrides: dict[str, Any] | None = None) -> dict:
    try:
        report = validate_task(params, preset, overrides)
    except DataValidationError as e:
        publish_validation(e.result)
        raise
    publish_validation(report)
    return report


if __name__ == "__main__":
    validate_flow()
