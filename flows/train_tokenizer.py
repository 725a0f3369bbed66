"""Prefect flow of the train_tokenizer stage: a thin wrapper around arm.tokenizer.train.train_tokenizer."""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, task

from arm.config import load_config, override_args


@task(name="train_tokenizer")
def train_tokenizer_task(params: str, preset: str | None, overrides: dict[str, Any] | None, resume: bool) -> dict:
    from arm.tokenizer.launch import train_tokenizer_multiprocess
    from arm.tokenizer.train import train_tokenizer

    cfg = load_config(params, preset, overrides)
    logger = get_run_logger()
    nproc = cfg.tokenizer.train.nproc
    if nproc > 1:  # data parallel: torchrun starts the processes, rank 0 writes the metrics
        metrics = train_tokenizer_multiprocess(params, preset, override_args(overrides), nproc, resume=resume)
    else:
        metrics = train_tokenizer(cfg, resume=resume, logger=logger)
    logger.info("tokenizer at %s: %s", cfg.tokenizer.output,
                {k: metrics.get(k) for k in ("shapes_psnr", "oracle_scene_accuracy", "code_usage",
                                             "fashion_zeroshot_accuracy", "train_seconds")})
    return metrics


@flow(name="train_tokenizer")
def train_tokenizer_flow(params: str = "params.yaml", preset: str | None = None,
                         overrides: dict[str, Any] | None = None, resume: bool = True) -> dict:
    options = load_config(params, preset, overrides).orchestration.task_options("train_tokenizer")
    return train_tokenizer_task.with_options(**options)(params, preset, overrides, resume)


if __name__ == "__main__":
    train_tokenizer_flow()
