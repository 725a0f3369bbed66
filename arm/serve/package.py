"""The package stage: the gated model into the BentoML model store, then a bento around it.

`package(cfg, model_dir)` -> {"model_tag", "bento_tag", "labels", ...}; the bento is built by
`bentoml build` in a subprocess (the service module reads its config at import, so the build
sees exactly the environment the server will: ARM_SET pins the model tag just packaged).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from arm.config import ArmConfig
from arm.io import atomic_write_json
from arm.serve.launch import serve_env
from arm.serve.store import PackageError, package_model

BENTOFILE = Path("services/bentofile.yaml")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise PackageError(f"{path}: invalid JSON: {e}") from None


def check_gate(cfg: ArmConfig, repo: Path, model_dir: Path) -> str:
    """What vouches for packaging this model: a passing gate run on its exact content (metrics/
    gate.json's candidate_sha256) or the promoted record of that content. A failed verdict, or none
    for this content, refuses it with the reason."""
    from arm.eval.gate import model_content_sha256

    sha = model_content_sha256(model_dir)
    gate = repo / cfg.gate.output
    if gate.is_file():
        result = _read_json(gate)
        if isinstance(result, dict) and result.get("candidate_sha256") == sha:
            if result.get("passed") is True:
                return f"passed {cfg.gate.output}"
            raise PackageError(f"{gate}: {model_dir} failed the gate ({', '.join(result.get('failed') or [])}); "
                               "not packaging it")
    promoted = repo / cfg.gate.promoted
    if promoted.is_file():
        record = _read_json(promoted)
        if isinstance(record, dict) and record.get("model_sha256") == sha:
            return f"promoted in {cfg.gate.promoted}"
    raise PackageError(f"{model_dir}: no passing gate run vouches for this content ({sha[:12]}) in {gate} or {promoted}; "
                       "run `arm evaluate` and `arm gate` on it first (`--ungated` packages a test build anyway)")


def default_model_dir(cfg: ArmConfig, repo: Path) -> tuple[Path, Path | None]:
    """(model dir, its eval metrics file): the gate's promoted model, else the first existing
    `sampling.model_dirs` (which `package` then packages only with a passing gate verdict)."""
    promoted = repo / cfg.gate.promoted
    if promoted.is_file():
        record = _read_json(promoted)
        model_dir = record.get("model_dir") if isinstance(record, dict) else None
        if not model_dir or not (repo / model_dir).is_dir():
            raise PackageError(f"{promoted}: promoted model dir {model_dir!r} not found")
        metrics = record.get("metrics_path")
        return repo / model_dir, (repo / metrics) if metrics and (repo / metrics).is_file() else None
    for d in cfg.sampling.model_dirs:
        if (repo / d).is_dir():
            return repo / d, None
    raise PackageError(f"no model dir given, no promoted model ({promoted}) and none of {cfg.sampling.model_dirs} "
                       f"exists under {repo}")


def build_bento(repo: Path, model_tag: str, *, name: str = "arm_service", bentofile: Path = BENTOFILE,
                version: str | None = None, preset: str | None = None, timeout_s: float = 600) -> str:
    """`bentoml build` with the service pinned to `model_tag`; returns the bento tag."""
    env = serve_env(model_tag=model_tag, preset=preset)
    # recorded in the bento, so `bentoml serve <bento>` uses this model and preset with no environment
    args = ["--arg", f"model_tag={model_tag}"] + (["--arg", f"preset={preset}"] if preset else [])
    cmd = [sys.executable, "-m", "bentoml", "build", "-f", str(bentofile), "--name", name, "--output", "tag", "--do-not-track", *args]
    if version:
        cmd += ["--version", version]
    cmd.append(str(repo))
    proc = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=timeout_s)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout)[-3000:]
        raise PackageError(f"bentoml build failed (exit {proc.returncode}):\n{tail}")
    m = re.search(r"__tag__:(\S+)", proc.stdout)
    if not m:
        raise PackageError(f"bentoml build printed no tag:\n{proc.stdout[-2000:]}")
    return m.group(1)


def package(
    cfg: ArmConfig,
    model_dir: str | Path | None = None,
    *,
    repo: str | Path = ".",
    version: str | None = None,
    visual_tokenizer: str | Path | None = None,
    metrics: str | Path | None = None,
    build: bool = True,
    record: str | Path | None = None,
    logger: Any = None,
    ungated: bool = False,
) -> dict[str, Any]:
    """The model into the store (and a bento around it). Only a model some passing gate run has
    vouched for (check_gate); `ungated` packages anything, recorded as such in the result."""
    repo = Path(repo).resolve()
    if model_dir is None:
        model_dir, promoted_metrics = default_model_dir(cfg, repo)
        metrics = metrics if metrics is not None else promoted_metrics
    model_dir = Path(model_dir)
    gate = "ungated (packaged with --ungated)" if ungated else check_gate(cfg, repo, model_dir)
    if logger:
        logger.info("%s: %s", model_dir, gate)
    tag, labels = package_model(
        model_dir, name=cfg.serve.model_name, version=version, repo=repo,
        visual_tokenizer=visual_tokenizer, metrics=metrics,
    )
    if logger:
        logger.info("saved %s as %s", model_dir, tag)
    result: dict[str, Any] = {"model_dir": str(model_dir), "model_tag": tag, "labels": labels, "bento_tag": None,
                              "gate": gate}
    if build:
        result["bento_tag"] = build_bento(repo, tag, name=cfg.serve.bento_name, version=version, preset=cfg.preset)
        if logger:
            logger.info("built bento %s", result["bento_tag"])
    if record is not None:
        atomic_write_json(record, result)
    return result
