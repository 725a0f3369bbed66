"""The pipeline's stage order and DVC's record of each stage.

Skipping unchanged stages has exactly one mechanism: DVC's lock file (dvc.lock). A stage runs
when `dvc status` says its deps, params or outs changed; Prefect adds retries, logs and run
history around it but never caches stage results itself, so the two can never disagree.

The pipeline flow runs a stale stage the way `dvc repro <stage>` does, in its own process: the
stage's outputs are removed, its dvc.yaml command (`arm <stage> ...`) runs, and the stage is
recorded in dvc.lock (`dvc commit`), so `dvc repro` right after has nothing to do.
"""

from __future__ import annotations

import re
import shlex
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


def stage_command(root: Path, stage: str) -> list[str]:
    """The arguments of the stage's `arm` command in dvc.yaml (without `arm`)."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        cmd = repo.stage.collect(stage)[0].cmd
    argv = shlex.split(cmd) if isinstance(cmd, str) else list(cmd)
    if not argv or argv[0] != "arm":
        raise ValueError(f"dvc.yaml stage {stage!r}: command {cmd!r} is not an `arm` command")
    return argv[1:]


def clear_outputs(root: Path, stage: str) -> None:
    """Removes the stage's outputs, as `dvc repro` does before running its command (persistent ones stay)."""
    from dvc.repo import Repo, lock_repo

    with Repo(str(root)) as repo, lock_repo(repo):
        repo.stage.collect(stage)[0].remove_outs(ignore_remove=False, force=False)


def record_stage(root: Path, stage: str) -> None:
    """Records the stage's deps, params and outs in dvc.lock and its outputs in the DVC cache (`dvc commit -f`)."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        repo.commit(stage, force=True)


def select_preset(params_path: Path, preset: str) -> None:
    """Sets `preset:` in params.yaml in place (keeping comments), as `dvc exp run -S preset=P` would."""
    text = params_path.read_text()
    new, n = re.subn(r"(?m)^preset:.*$", f"preset: {preset}", text, count=1)
    if n != 1:
        raise ValueError(f"{params_path} has no top-level `preset:` line")
    if new != text:
        atomic_write_text(params_path, new)
