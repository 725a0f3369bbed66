"""Prefect flow of the gate stage: a thin wrapper around arm.eval.gate.

A rejected candidate ends the flow run in a Failed state (after metrics/gate.json is written), so
a pipeline stops before packaging; `arm gate` then exits 1. Promotion happens only on a pass.
The decision and each check are the run's `gate-decision` artifact."""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, task
from prefect.states import Failed

from arm.config import load_config
from arm.orchestration.artifacts import publish_gate


@task(name="gate")
def gate_task(params: str, preset: str | None, overrides: dict[str, Any] | None, candidate: str,
              promoted: str | None, promote: bool) -> dict:
    from arm.eval.gate import gate
    from arm.eval.gate import promote as promote_model

    cfg = load_config(params, preset, overrides)
    result = gate(cfg, candidate, promoted)
    logger = get_run_logger()
    if result.passed and promote:
        record = promote_model(cfg, result, candidate, promoted)
        logger.info("promoted %s (replacing %s)", record["model"], record["replaced"])
    return result.to_json()


def rejection_message(result: dict) -> str:
    return f"{result['candidate']} rejected by the gate: {', '.join(result['failed'])}"


@flow(name="gate")
def gate_flow(candidate: str, params: str = "params.yaml", preset: str | None = None,
              overrides: dict[str, Any] | None = None, promoted: str | None = None, promote: bool = False):
    result = gate_task(params, preset, overrides, candidate, promoted, promote)
    publish_gate(result)
    if not result["passed"]:
        return Failed(message=rejection_message(result))
    get_run_logger().info("gate passed: %s", result["candidate"])
    return result


if __name__ == "__main__":
    import sys

    gate_flow(sys.argv[1])
