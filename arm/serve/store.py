"""The BentoML model store side of `arm package`, and what the service reads back from it.

A packaged model is one store entry `<name>:<version>` whose `model/` folder is a complete,
self-contained model dir: the AR model (safetensors), its text tokenizer, vocab_layout.json,
manifest.json, and the visual tokenizer copied to `model/visual_tokenizer/` with the manifest
pointing there. Labels carry provenance (git revision, DVC data version, eval metrics);
metadata carries the full eval JSON and a sha256 per file, checked again when the service loads.
Only safetensors/JSON/text files are accepted: nothing in a package is ever unpickled.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import subprocess
from pathlib import Path
from typing import Any

log = logging.getLogger("arm.serve")

MODEL_SUBDIR = "model"
VT_SUBDIR = "visual_tokenizer"
MANIFEST_FILE = "manifest.json"
# Formats that can execute code when loaded (pickle and friends): refused outright.
PICKLE_SUFFIXES = {".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib", ".dill", ".npz", ".h5", ".msgpack"}
REQUIRED_FILES = ("config.json", "vocab_layout.json")


class PackageError(ValueError):
    """A model dir that cannot be packaged; the message names the path and the reason."""


# ----------------------------------------------------------------------------- provenance


def _git(repo: Path, *args: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def git_revision(repo: Path) -> tuple[str, bool]:
    """(commit sha or "unknown", whether tracked files differ from it)."""
    sha = _git(repo, "rev-parse", "HEAD")
    if sha is None:
        return "unknown", False
    dirty = bool(_git(repo, "status", "--porcelain", "--untracked-files=no"))
    return sha, dirty


def data_version(repo: Path) -> tuple[str, dict[str, str]]:
    """A short hash over the content hashes DVC recorded for `data/` outputs, and those hashes.

    Sources: stage outputs in dvc.lock and `*.dvc` files under data/. "untracked" when DVC
    tracks no data yet (e.g. a model trained on the embedded shapes world only).
    """
    import yaml

    entries: dict[str, str] = {}

    def add(outs: Any, base: str = "") -> None:
        for out in outs or []:
            if not isinstance(out, dict) or "path" not in out:
                continue
            path = str(Path(base) / out["path"]) if base else str(out["path"])
            digest = out.get("md5") or out.get("hash") or out.get("etag")
            if path.startswith("data/") and digest:
                entries[path] = str(digest)

    lock = repo / "dvc.lock"
    if lock.is_file():
        doc = yaml.safe_load(lock.read_text()) or {}
        for stage in (doc.get("stages") or {}).values():
            add(stage.get("outs"))
    for f in sorted((repo / "data").glob("**/*.dvc")) if (repo / "data").is_dir() else []:
        doc = yaml.safe_load(f.read_text()) or {}
        add(doc.get("outs"), base=str(f.parent.relative_to(repo)))
    if not entries:
        return "untracked", {}
    blob = "\n".join(f"{k}:{v}" for k, v in sorted(entries.items()))
    return hashlib.sha256(blob.encode()).hexdigest()[:12], entries


def eval_metrics(repo: Path, model_dir: Path, metrics: Path | None = None) -> tuple[Path | None, dict[str, Any]]:
    """metrics/eval_<model dir name>.json (or `metrics`) if it exists."""
    path = metrics if metrics is not None else repo / "metrics" / f"eval_{model_dir.name}.json"
    if not path.is_file():
        if metrics is not None:
            raise PackageError(f"{path}: eval metrics file not found")
        return None, {}
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise PackageError(f"{path}: invalid JSON: {e}") from None
    if not isinstance(data, dict):
        raise PackageError(f"{path}: expected a JSON object")
    return path, data


def eval_scores(metrics: dict[str, Any]) -> dict[str, Any]:
    """The benchmark table of an `arm evaluate` metrics file (its `scores`), else the whole file."""
    scores = metrics.get("scores")
    return scores if isinstance(scores, dict) else metrics


def metric_labels(metrics: dict[str, Any], prefix: str = "eval.", depth: int = 2) -> dict[str, str]:
    """Scalar scores as flat string labels (`eval.shapes_geneval.overall` = "0.08")."""
    metrics = eval_scores(metrics)
    out: dict[str, str] = {}

    def walk(node: Any, key: str, level: int) -> None:
        if isinstance(node, bool):
            out[key] = str(node).lower()
        elif isinstance(node, (int, float)):
            out[key] = f"{node:.6g}"
        elif isinstance(node, dict) and level < depth:
            for k, v in node.items():
                walk(v, f"{key}.{k}" if key else str(k), level + 1)

    walk(metrics, "", 0)
    return {f"{prefix}{k}": v for k, v in sorted(out.items())}


# ----------------------------------------------------------------------------- files


def sha256_tree(root: Path) -> dict[str, str]:
    from arm.io import sha256_file

    return {str(p.relative_to(root)): sha256_file(p) for p in sorted(root.rglob("*")) if p.is_file()}


def check_safe_files(root: Path) -> None:
    bad = [str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and p.suffix.lower() in PICKLE_SUFFIXES]
    if bad:
        raise PackageError(
            f"{root}: refusing to package files in pickle-capable formats {bad[:5]}; save weights as safetensors"
        )
    links = [str(p.relative_to(root)) for p in root.rglob("*") if p.is_symlink()]
    if links:
        raise PackageError(f"{root}: refusing to package symlinks {links[:5]}")


def _visual_ref(manifest: dict[str, Any]) -> str | None:
    ref = manifest.get("visual_tokenizer")
    if isinstance(ref, dict):
        ref = ref.get("path") or ref.get("dir")
    return str(ref) if ref else None


def resolve_visual_tokenizer(model_dir: Path, manifest: dict[str, Any], override: Path | None, repo: Path) -> Path | None:
    if override is not None:
        if not override.is_dir():
            raise PackageError(f"{override}: visual tokenizer dir not found")
        return override
    ref = _visual_ref(manifest)
    if ref is None:
        return None
    for candidate in (model_dir / ref, repo / ref, Path(ref)):
        if candidate.is_dir():
            return candidate
    raise PackageError(f"{model_dir / MANIFEST_FILE}: visual tokenizer {ref!r} not found (relative to the model dir or {repo})")


def stage_model(model_dir: Path, dest: Path, visual_dir: Path | None) -> dict[str, Any]:
    """Copy a model dir (and its visual tokenizer) into `dest`, self-contained; returns the new manifest."""
    copy_ignore = shutil.ignore_patterns(".*", "__pycache__")
    shutil.copytree(model_dir, dest, ignore=copy_ignore)
    manifest_path = dest / MANIFEST_FILE
    manifest: dict[str, Any] = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    if visual_dir is not None and visual_dir.resolve() != (model_dir / VT_SUBDIR).resolve():
        check_safe_files(visual_dir)
        target = dest / VT_SUBDIR
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(visual_dir, target, ignore=copy_ignore)
        ref = manifest.get("visual_tokenizer")
        if isinstance(ref, dict):
            ref = {**ref, "packaged_from": str(ref.get("path") or ref.get("dir") or visual_dir), "path": VT_SUBDIR}
            ref.pop("dir", None)
        else:
            ref = VT_SUBDIR
        manifest["visual_tokenizer"] = ref
        manifest_path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


# ----------------------------------------------------------------------------- package / load


def package_model(
    model_dir: str | Path,
    *,
    name: str = "arm",
    version: str | None = None,
    repo: str | Path = ".",
    visual_tokenizer: str | Path | None = None,
    metrics: str | Path | None = None,
    extra_labels: dict[str, str] | None = None,
) -> tuple[str, dict[str, str]]:
    """Save `model_dir` into the BentoML model store; returns (tag, labels)."""
    import bentoml

    model_dir, repo = Path(model_dir), Path(repo)
    if not model_dir.is_dir():
        raise PackageError(f"{model_dir}: model dir not found")
    missing = [f for f in REQUIRED_FILES if not (model_dir / f).is_file()]
    if missing:
        raise PackageError(f"{model_dir}: not an exported model dir (missing {missing})")
    if not any(model_dir.glob("*.safetensors")):
        raise PackageError(f"{model_dir}: no .safetensors weights")
    check_safe_files(model_dir)
    manifest_path = model_dir / MANIFEST_FILE
    try:
        manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    except json.JSONDecodeError as e:
        raise PackageError(f"{manifest_path}: invalid JSON: {e}") from None
    visual_dir = resolve_visual_tokenizer(model_dir, manifest, Path(visual_tokenizer) if visual_tokenizer else None, repo)

    sha, dirty = git_revision(repo)
    data_ver, data_entries = data_version(repo)
    metrics_path, metrics_data = eval_metrics(repo, model_dir, Path(metrics) if metrics else None)
    labels = {
        "git_revision": sha,
        "git_dirty": str(dirty).lower(),
        "data_version": data_ver,
        "source": model_dir.name,
        "visual_tokenizer": "packaged" if visual_dir is not None else "none",
        **({"model_data_version": str(manifest["data_version"])} if isinstance(manifest.get("data_version"), (str, int)) else {}),
        **metric_labels(metrics_data),
        **(extra_labels or {}),
    }
    tag = f"{name}:{version}" if version else name
    with bentoml.models.create(tag, labels=labels) as bento_model:
        dest = Path(bento_model.path) / MODEL_SUBDIR
        new_manifest = stage_model(model_dir, dest, visual_dir)
        # BentoML metadata takes no nulls; the JSON documents go in as strings, verbatim.
        bento_model.info.metadata.update(
            {
                "eval_json": json.dumps(metrics_data, sort_keys=True),
                "eval_file": str(metrics_path) if metrics_path else "",
                "data_outs": data_entries,
                "manifest_json": json.dumps(new_manifest, sort_keys=True),
                "files": sha256_tree(dest),
            }
        )
    log.info("packaged %s as %s", model_dir, bento_model.tag)
    return str(bento_model.tag), labels


def verify_files(model_path: Path, expected: dict[str, str]) -> None:
    """Raise if a packaged file is missing, changed, or was added since packaging."""
    actual = sha256_tree(model_path)
    changed = sorted(k for k in expected if actual.get(k) != expected[k])
    added = sorted(set(actual) - set(expected))
    if changed or added:
        raise RuntimeError(f"{model_path}: package contents changed since `arm package` (changed {changed[:5]}, added {added[:5]})")
    check_safe_files(model_path)


def model_info(stored: Any) -> dict[str, Any]:
    """Tag, labels and metadata of a stored BentoML model, as plain JSON."""
    info = stored.info
    meta = dict(info.metadata or {})
    return {
        "tag": str(stored.tag),
        "created_at": info.creation_time.isoformat() if getattr(info, "creation_time", None) else None,
        "labels": dict(info.labels or {}),
        "eval": eval_scores(json.loads(meta.get("eval_json") or "{}")),
        "manifest": {k: v for k, v in json.loads(meta.get("manifest_json") or "{}").items() if k != "vocab_layout"},
    }
