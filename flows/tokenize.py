"""Prefect flow of the tokenize stage: a thin wrapper around arm.tokenizer.tokens.tokenize."""

from __future__ import annotations

from prefect import flow, get_run_logger, task

from arm.config import load_config


@task(name="tokenize")
def tokenize_task(params: str, preset: str | None, overrides: list[str] | None) -> dict:
    from arm.tokenizer.tokens import tokenize

    cfg = load_config(params, preset, overrides)
    logger = get_run_logger()
    manifest = tokenize(cfg, logger=logger)
    logger.info("%d images -> %s (%s images/s)", manifest["images"], cfg.tokenizer.tokens.output,
                manifest["images_per_second"])
    return manifest


@flow(name="tokenize")
def tokenize_flow(params: str = "params.yaml", preset: str | None = None, overrides: list[str] | None = None) -> dict:
    return tokenize_task(params, preset, overrides)


if __name__ == "__main__":
    tokenize_flow()
