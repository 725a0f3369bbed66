"""Prefect flow of the tokenize stage: a thin wrapper around arm.tokenizer.tokens.tokenize.

With nproc > 1 (tokenizer.tokens.nproc, or the argument) the task starts torchrun on this
machine (arm.tokenizer.launch); every process runs the same stage function on its shards.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, task

from arm.config import load_config, override_args


@task(name="tokenize")
def tokenize_task(params: str, preset: str | None, overrides: dict[str, Any] | None, nproc: int | None) -> dict:
    from arm.tokenizer.launch import tokenize_multiprocess
    from arm.tokenizer.tokens import tokenize

    cfg = load_config(params, preset, overrides)
    nproc = nproc or cfg.tokenizer.tokens.nproc
    logger = get_run_logger()
    if nproc > 1:
        manifest = tokenize_multiprocess(params, preset, override_args(overrides), nproc)
    else:
        manifest = tokenize(cfg, logger=logger)
    logger.info("%d images -> %s (%s images/s on %d process(es), %s)", manifest["images"], cfg.tokenizer.tokens.output,
                manifest["images_per_second"], manifest["world_size"], manifest["precision"])
    return manifest


@flow(name="tokenize")
def tokenize_flow(params: str = "params.yaml", preset: str | None = None, overrides: dict[str, Any] | None = None,
                  nproc: int | None = None) -> dict:
    """nproc: processes on this machine; None = tokenizer.tokens.nproc."""
    options = load_config(params, preset, overrides).orchestration.task_options("tokenize")
    return tokenize_task.with_options(**options)(params, preset, overrides, nproc)


if __name__ == "__main__":
    tokenize_flow()
