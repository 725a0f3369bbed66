"""Atomic file writes: write to a temporary sibling, fsync, then rename over the target.

A crash leaves either the old file or the new one, never half of either.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator


def _read_umask() -> int:
    mask = os.umask(0)  # the only way to read it; done once at import, before threads start
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp creates 0600; give the file the mode open() would (model dirs are read by other
        # users: a serving container, a DVC cache shared by a team)
        os.fchmod(fd, 0o666 & ~_UMASK)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yields a temporary path (file or directory) that replaces `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{os.getpid()}.tmp"
    _remove(tmp)
    try:
        yield tmp
        if path.is_dir() and tmp.is_dir():
            old = path.parent / f".{path.name}.{os.getpid()}.old"
            _remove(old)
            os.replace(path, old)
            os.replace(tmp, path)
            _remove(old)
        else:
            os.replace(tmp, path)
    finally:
        _remove(tmp)


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p)
    elif p.exists() or p.is_symlink():
        p.unlink()


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def read_saved_config(directory: str | Path, what: str, fmt: str, version: int,
                      config_file: str = "config.json", weights_file: str = "model.safetensors") -> dict:
    """The config.json of a saved model dir of format `fmt`, checked: both files there, valid JSON,
    the right format, a version this code reads; every failure names the path."""
    directory = Path(directory)
    cfg_path, weights = directory / config_file, directory / weights_file
    if not cfg_path.is_file() or not weights.is_file():
        raise FileNotFoundError(f"{directory}: not a saved {what} (need {config_file} and {weights_file})")
    try:
        spec = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{cfg_path}: invalid JSON: {e}") from None
    if not isinstance(spec, dict) or spec.get("format") != fmt:
        found = spec.get("format") if isinstance(spec, dict) else type(spec).__name__
        raise ValueError(f"{cfg_path}: not an {fmt} config (format={found!r})")
    if int(spec.get("version", 0)) > version:
        raise ValueError(f"{cfg_path}: format version {spec['version']} is newer than this code ({version})")
    return spec
