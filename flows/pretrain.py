"""Prefect flow of the pretrain stage: a thin wrapper around arm.train.pretrain.pretrain.

With nproc > 1 (pretrain.nproc, or the argument) the task starts torchrun on this machine (the same command a GPU work pool or
the `deepspeed` launcher would run); every process runs the same stage function.
"""

from __future__ import annotations

from prefect import flow, get_run_logger, task

from arm.config import load_config


@task(name="pretrain")
def pretrain_task(params: str, preset: str | None, overrides: list[str] | None, nproc: int | None,
                  stop_after: int | None) -> dict:
    from arm.train.pretrain import pretrain, pretrain_multiprocess

    cfg = load_config(params, preset, overrides)
    nproc = nproc or cfg.pretrain.nproc
    logger = get_run_logger()
    logger.info("pretrain %s: %d steps on %d process(es), images from %s", cfg.preset, cfg.pretrain.max_steps, nproc,
                cfg.pretrain.images)
    if nproc > 1:
        metrics = pretrain_multiprocess(params, preset, overrides or [], nproc, stop_after)
    else:
        metrics = pretrain(cfg, stop_after=stop_after, logger=logger)
    if metrics.get("stopped") != "stop_after":
        logger.info("%.0f tokens/s, MFU %.3f, val loss %s; model at %s", metrics["tokens_per_s"], metrics["mfu"],
                    {k: round(v, 4) for k, v in metrics["val_loss"].items()}, cfg.pretrain.output)
    return metrics


@flow(name="pretrain")
def pretrain_flow(params: str = "params.yaml", preset: str | None = None, overrides: list[str] | None = None,
                  nproc: int | None = None, stop_after: int | None = None) -> dict:
    """nproc: processes on this machine; None = pretrain.nproc."""
    return pretrain_task(params, preset, overrides, nproc, stop_after)


if __name__ == "__main__":
    pretrain_flow()
