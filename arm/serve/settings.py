"""The configuration a service process runs with, read once when services/service.py is imported.

BentoML imports the service module in every process it starts, so the config must come from
files and the environment, not from arguments:
  ARM_PARAMS  params file (default: ./params.yaml, else the one beside services/)
  ARM_PRESET  preset name
  ARM_SET     `key.path=value` overrides separated by ';' or newlines (as `arm --set`)
A bento records `preset` and `model_tag` as build arguments (`bentoml build --arg`); those are
the defaults the environment overrides.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from arm.config import ArmConfig, load_config

_REPO_PARAMS = Path(__file__).resolve().parents[2] / "params.yaml"


def env_overrides(value: str | None = None) -> list[str]:
    raw = os.environ.get("ARM_SET", "") if value is None else value
    return [s.strip() for s in re.split(r"[;\n]", raw) if s.strip()]


def params_path() -> Path:
    if env := os.environ.get("ARM_PARAMS"):
        return Path(env)
    local = Path.cwd() / "params.yaml"
    return local if local.exists() else _REPO_PARAMS


def load_settings(preset: str | None = None, overrides: list[str] | None = None) -> ArmConfig:
    """`preset`/`overrides` are defaults (a bento's build arguments); the environment wins."""
    return load_config(params_path(), os.environ.get("ARM_PRESET") or preset or None,
                       [*(overrides or []), *env_overrides()])
