"""Prefect flow of the rl stage: a thin wrapper around arm.rl.trainer.train_rl."""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, task

from arm.config import load_config, override_args


@task(name="grpo")
def grpo_task(params: str, preset: str | None, overrides: dict[str, Any] | None, stop_after: int | None) -> dict:
    from arm.rl.trainer import train_rl, train_rl_multiprocess

    cfg = load_config(params, preset, overrides)
    logger = get_run_logger()
    logger.info("GRPO on %s for tasks %s, %d steps (seed %d), %d process(es)", cfg.rl.base, cfg.rl.tasks, cfg.rl.steps,
                cfg.rl.seed, cfg.rl.nproc)
    if cfg.rl.nproc > 1:
        metrics = train_rl_multiprocess(params, preset, override_args(overrides), cfg.rl.nproc, stop_after)
    else:
        metrics = train_rl(cfg, stop_after=stop_after)
    if metrics.get("stopped") == "stop_after":
        logger.info("stopped after step %d with a checkpoint in %s", metrics["step"], metrics["run_dir"])
    else:
        r = metrics["rewards"]["reward"]
        logger.info("reward %.4f -> %.4f, KL %.5f; model at %s", r["first"], r["last"], metrics["kl_final"] or 0.0,
                    cfg.rl.output)
    return metrics


@flow(name="rl")
def rl_flow(params: str = "params.yaml", preset: str | None = None, overrides: dict[str, Any] | None = None,
            stop_after: int | None = None) -> dict:
    options = load_config(params, preset, overrides).orchestration.task_options("rl")
    return grpo_task.with_options(**options)(params, preset, overrides, stop_after)


@flow(name="rl_claims")
def rl_claims_flow(params: str = "params.yaml", preset: str | None = "small", overrides: dict[str, Any] | None = None,
                   seeds: list[int] | None = None, task_sets: list[str] | None = None,
                   out_root: str = "models/rl-claims", eval_seeds: list[int] | None = None) -> dict:
    """RL per seed and task set, each evaluated against the base per eval seed (arm.rl.claims)."""
    from arm.rl.claims import run_claims

    result = run_claims(params, preset, override_args(overrides), seeds or [0, 1, 2], task_sets or ["both", "t2i", "edit"], out_root,
                        eval_seeds=eval_seeds or [0, 1])
    get_run_logger().info("claims: %s", {k: v.get("met", "reported") for k, v in result["claims"].items()})
    return result


if __name__ == "__main__":
    rl_flow()
