"""Prefect flow of the package stage: a thin wrapper around arm.serve.package.package."""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, task

from arm.config import load_config
from arm.serve.package import package


@task(name="package")
def package_task(params: str, preset: str | None, overrides: dict[str, Any] | None, model_dir: str | None,
                 version: str | None, visual_tokenizer: str | None, metrics: str | None, build: bool,
                 record: str | None, ungated: bool = False) -> dict:
    cfg = load_config(params, preset, overrides)
    return package(cfg, model_dir, repo=".", version=version, visual_tokenizer=visual_tokenizer, metrics=metrics,
                   build=build, record=record if record is not None else cfg.serve.record, logger=get_run_logger(),
                   ungated=ungated)


@flow(name="package")
def package_flow(params: str = "params.yaml", preset: str | None = None, overrides: dict[str, Any] | None = None,
                 model_dir: str | None = None, version: str | None = None, visual_tokenizer: str | None = None,
                 metrics: str | None = None, build: bool = True, record: str | None = None, ungated: bool = False) -> dict:
    return package_task(params, preset, overrides, model_dir, version, visual_tokenizer, metrics, build, record, ungated)


if __name__ == "__main__":
    package_flow()
