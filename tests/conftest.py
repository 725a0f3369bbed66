"""Shared fixtures. Every test runs offline with Prefect and BentoML homes in a temp folder."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

_SESSION_HOME = Path(tempfile.mkdtemp(prefix="arm-tests-"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ["PREFECT_HOME"] = str(_SESSION_HOME / "prefect")
os.environ["BENTOML_HOME"] = str(_SESSION_HOME / "bentoml")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")

REPO = Path(__file__).resolve().parents[1]

pytest_plugins = ["s3_servers", "repo_copy", "browser"]  # S3 servers (SeaweedFS, moto); throwaway repo copies; Chromium


@pytest.fixture
def micro_cfg():
    from arm.config import load_config

    return load_config(REPO / "params.yaml", preset="micro")
