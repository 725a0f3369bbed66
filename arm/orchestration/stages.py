"""The pipeline's stage order and how one stage is brought up to date.

Skipping unchanged stages has exactly one mechanism: DVC's lock file (dvc.lock). A stage runs
when `dvc status` says its deps, params or outs changed; Prefect adds retries, logs and run
history around it but never caches stage results itself, so the two can never disagree.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

from arm.io import atomic_write_text

PIPELINE_STAGES: tuple[str, ...] = (
    "curate",
    "validate",
    "train_tokenizer",
    "tokenize",
    "eval_prompts",
    "pretrain",
    "rl",
    "evaluate_base",
    "evaluate_rl",
    "gate",
    "package",
)


def stage_is_stale(root: Path, stage: str) -> bool:
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        return bool(repo.status(targets=[stage]))


def reproduce_stage(root: Path, stage: str) -> None:
    """Runs one stage (its command is `arm <stage>`) and records it in dvc.lock."""
    from dvc.repo import Repo

    put_own_scripts_on_path()
    with Repo(str(root)) as repo:
        repo.reproduce(stage, single_item=True)


def put_own_scripts_on_path() -> None:
    """DVC runs `arm <stage>` through the shell: make that the `arm` of this interpreter's
    environment, so `.venv/bin/arm demo` works without an activated virtualenv."""
    scripts = str(Path(sys.executable).parent)
    parts = os.environ.get("PATH", "").split(os.pathsep)
    if parts[0] != scripts:
        os.environ["PATH"] = os.pathsep.join([scripts, *[p for p in parts if p and p != scripts]])


def select_preset(params_path: Path, preset: str) -> None:
    """Sets `preset:` in params.yaml in place (keeping comments), as `dvc exp run -S preset=P` would."""
    text = params_path.read_text()
    new, n = re.subn(r"(?m)^preset:.*$", f"preset: {preset}", text, count=1)
    if n != 1:
        raise ValueError(f"{params_path} has no top-level `preset:` line")
    if new != text:
        atomic_write_text(params_path, new)
