"""Prefect flow of the gate stage: a thin wrapper around arm.eval.gate.

A rejected candidate raises GateRejected after metrics/gate.json is written, which fails the
flow (and stops a pipeline before packaging)."""

from __future__ import annotations

from prefect import flow, get_run_logger, task

from arm.config import load_config


class GateRejected(RuntimeError):
    def __init__(self, result: dict):
        super().__init__(f"{result['candidate']} rejected by the gate: {', '.join(result['failed'])}")
        self.result = result


@task(name="gate")
def gate_task(params: str, preset: str | None, overrides: list[str] | None, candidate: str,
              promoted: str | None, promote: bool) -> dict:
    from arm.eval.gate import gate
    from arm.eval.gate import promote as promote_model

    cfg = load_config(params, preset, overrides)
    result = gate(cfg, candidate, promoted)
    logger = get_run_logger()
    if not result.passed:
        raise GateRejected(result.to_json())
    logger.info("gate passed: %s", result.candidate)
    if promote:
        record = promote_model(cfg, result, candidate, promoted)
        logger.info("promoted %s (replacing %s)", record["model"], record["replaced"])
    return result.to_json()


@flow(name="gate")
def gate_flow(candidate: str, params: str = "params.yaml", preset: str | None = None,
              overrides: list[str] | None = None, promoted: str | None = None, promote: bool = False) -> dict:
    return gate_task(params, preset, overrides, candidate, promoted, promote)


if __name__ == "__main__":
    import sys

    gate_flow(sys.argv[1])
