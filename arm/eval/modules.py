"""Loading the in-repo `evaluate` modules (eval_modules/<name>/<name>.py) by local path."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

MODULES_DIR = Path(__file__).resolve().parents[2] / "eval_modules"
MODULE_NAMES = ("shapes_geneval", "shapes_wise", "shapes_edit", "understanding", "fmnist", "tokenizer")


def module_path(name: str) -> Path:
    path = MODULES_DIR / name
    if name not in MODULE_NAMES or not (path / f"{name}.py").is_file():
        raise ValueError(f"unknown benchmark module {name!r}; known: {list(MODULE_NAMES)} (in {MODULES_DIR})")
    return path


@lru_cache(maxsize=None)
def load(name: str, config_name: str | None = None):
    """The module, kept in memory (no cache files): evaluate.load only ever sees a local path."""
    import evaluate

    return evaluate.load(str(module_path(name)), config_name, keep_in_memory=True)


def as_reference(value) -> str:
    """References travel through Arrow as JSON strings."""
    return json.dumps(value, sort_keys=True)
