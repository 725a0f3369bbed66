"""Prefect flows of the eval_prompts and evaluate stages: thin wrappers around arm.eval.

evaluate publishes the model's headline scores (`eval-scores-<model>`) and a link to its report
page (`eval-report-<model>`) as artifacts of the run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task

from arm.config import load_config
from arm.orchestration.artifacts import publish_evaluation


@task(name="eval_prompts")
def eval_prompts_task(params: str, preset: str | None, overrides: dict[str, Any] | None) -> str:
    from arm.eval.prompts import build_prompt_sets

    cfg = load_config(params, preset, overrides)
    out = build_prompt_sets(cfg)
    get_run_logger().info("held-out prompt sets written to %s", out)
    return str(out)


@flow(name="eval_prompts")
def eval_prompts_flow(params: str = "params.yaml", preset: str | None = None,
                      overrides: dict[str, Any] | None = None) -> str:
    return eval_prompts_task(params, preset, overrides)


@task(name="evaluate", task_run_name="evaluate {model_dir}")
def evaluate_task(params: str, preset: str | None, overrides: dict[str, Any] | None, model_dir: str) -> dict:
    from arm.eval.run import evaluate

    cfg = load_config(params, preset, overrides)
    return evaluate(cfg, model_dir, logger=get_run_logger())


@flow(name="evaluate")
def evaluate_flow(model_dir: str, params: str = "params.yaml", preset: str | None = None,
                  overrides: dict[str, Any] | None = None) -> dict:
    metrics = evaluate_task(params, preset, overrides, model_dir)
    reports = Path(load_config(params, preset, overrides).eval.reports_dir)
    publish_evaluation(metrics, reports / f"eval_{metrics['model']}" / "index.html")
    return metrics


if __name__ == "__main__":
    import sys

    evaluate_flow(sys.argv[1])
