"""The BentoML model store side of `arm package`, and what the service reads back from it.

A packaged model is one store entry `<name>:<version>` whose `model/` folder is a complete,
self-contained model dir: the AR model (safetensors), its text tokenizer, vocab_layout.json,
manifest.json, and the visual tokenizer copied to `model/visual_tokenizer/` with the manifest
pointing there. Labels carry provenance (git revision, DVC data version, eval metrics);
metadata carries the full eval JSON, a sha256 per file and each file's size and mtime.
Only safetensors/JSON/text files are accepted: nothing in a package is ever unpickled.

Hashes are computed once, at `arm package`, and checked there against the copy the model store
keeps (and the visual tokenizer against the fingerprint the model was trained with). A model
process starting checks the cheap record instead — the file list, sizes and mtimes (rsync's
quick check) — and re-hashes only a file whose mtime moved, or every file on request
(`serve.verify: full`): at 7b a full re-hash reads ~15 GB before the first request. The quick
check catches truncation, a partial copy and any rewrite; a deliberate forgery that restores
size and mtime needs write access to the store, whose metadata (the hashes) sits beside it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import subprocess
from pathlib import Path
from typing import Any

from arm.io import sha256_file
from arm.model.card import CARD_FILE, write_model_card

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
    return {str(p.relative_to(root)): sha256_file(p) for p in sorted(root.rglob("*")) if p.is_file()}


def stat_tree(root: Path) -> dict[str, list[int]]:
    """[size, mtime in ns] per file: the pair rsync's quick check compares."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file():
            st = p.stat()
            out[str(p.relative_to(root))] = [st.st_size, st.st_mtime_ns]
    return out


def same_mtime(actual_ns: int, recorded_ns: int) -> bool:
    """Equal, or a copy that kept whole seconds only (tar, some file systems) of the recorded time."""
    second = 1_000_000_000
    return actual_ns == recorded_ns or (actual_ns % second == 0 and actual_ns == recorded_ns - recorded_ns % second)


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
        check_visual_fingerprint(dest, new_manifest)
        if metrics_data and (dest / CARD_FILE).is_file():  # the exported card, now with the eval results
            write_model_card(dest, model_ref=str(model_dir), eval_metrics=metrics_data)
        # BentoML metadata takes no nulls; the JSON documents go in as strings, verbatim.
        bento_model.info.metadata.update(
            {
                "eval_json": json.dumps(metrics_data, sort_keys=True),
                "eval_file": str(metrics_path) if metrics_path else "",
                "data_outs": data_entries,
                "manifest_json": json.dumps(new_manifest, sort_keys=True),
                "files": sha256_tree(dest),
                "file_stats": stat_tree(dest),
            }
        )
    check_stored(bentoml.models.get(bento_model.tag))
    log.info("packaged %s as %s", model_dir, bento_model.tag)
    return str(bento_model.tag), labels


def check_visual_fingerprint(model_path: Path, manifest: dict[str, Any]) -> None:
    """The packaged visual tokenizer must be the one the model was trained with (the fingerprint
    its manifest recorded): checked here, once, so a starting service need not hash it."""
    ref = manifest.get("visual_tokenizer")
    if not isinstance(ref, dict) or not ref.get("sha256") or ref.get("kind") == "oracle":
        return
    from arm.tokenizer.tokens import tokenizer_fingerprint

    vt_dir = model_path / str(ref.get("path") or VT_SUBDIR)
    try:
        now = tokenizer_fingerprint(vt_dir)
    except FileNotFoundError as e:
        raise PackageError(f"{vt_dir}: visual tokenizer incomplete: {e}") from None
    if now != ref["sha256"]:
        raise PackageError(f"{vt_dir}: visual tokenizer fingerprint {now[:12]} is not the {str(ref['sha256'])[:12]} "
                           "the model was trained with; pass the original tokenizer with --tokenizer")


def check_stored(stored: Any) -> None:
    """The model store's copy (what a service will load) against the hashes just recorded; a copy
    that does not match is deleted. Warns when the copy lost the recorded mtimes: every start
    would then re-hash those files."""
    import bentoml

    model_path, meta = Path(stored.path) / MODEL_SUBDIR, stored.info.metadata
    try:
        verify_package(model_path, meta, full=True)
    except RuntimeError as e:
        bentoml.models.delete(stored.tag)
        raise PackageError(f"{stored.tag}: the model store's copy does not match the packaged files: {e}") from None
    recorded = meta["file_stats"]
    moved = sorted(k for k, (_, ns) in stat_tree(model_path).items() if not same_mtime(ns, recorded[k][1]))
    if moved:
        log.warning("%s: the store's copy has new mtimes for %s; each start will re-hash them", stored.tag, moved[:5])


def verify_package(model_path: Path, metadata: dict[str, Any], *, full: bool = False) -> list[str]:
    """Raise if a packaged file is missing, was added, or changed since `arm package`; returns the
    files it had to hash.

    Quick (the default): names and sizes from `file_stats` — a truncated or partly copied file
    fails here, unread — then a sha256 of only the files whose mtime moved. `full`, or a package
    recorded without `file_stats`: a sha256 of every file.
    """
    expected: dict[str, str] = metadata.get("files") or {}
    if not expected:
        raise RuntimeError(f"{model_path}: no file checksums in the package's metadata; package it with `arm package`")
    recorded: dict[str, list[int]] = metadata.get("file_stats") or {}
    check_safe_files(model_path)
    actual = stat_tree(model_path)
    missing = sorted(set(expected) - set(actual))
    added = sorted(set(actual) - set(expected))
    resized = sorted(k for k in expected if k in actual and k in recorded and actual[k][0] != recorded[k][0])
    if missing or added or resized:
        raise RuntimeError(f"{model_path}: package contents changed since `arm package` (missing {missing[:5]}, "
                           f"added {added[:5]}, size changed {resized[:5]})")
    if not full and not recorded:
        log.info("%s: packaged without sizes and mtimes; re-hashing every file (re-package for a quick start)", model_path)
    to_hash = [k for k in sorted(expected) if full or k not in recorded or not same_mtime(actual[k][1], recorded[k][1])]
    changed = [k for k in to_hash if sha256_file(model_path / k) != expected[k]]
    if changed:
        raise RuntimeError(f"{model_path}: package contents changed since `arm package` (content of {changed[:5]})")
    if to_hash and not full and recorded:
        log.warning("%s: %d file(s) with a new mtime re-hashed, content unchanged: %s", model_path, len(to_hash), to_hash[:5])
    return to_hash


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
