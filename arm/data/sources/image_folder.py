"""Images in a folder (local or s3://bucket/prefix), captioned by a JSONL manifest or sidecar .txt files.

Bytes are yielded exactly as stored: images are not decoded and sidecar text is not decoded,
because curation does both and files every failure under `rejections` with its reason.
Problems with single files (missing, oversized, malformed manifest row) become error records;
only a folder that cannot be listed at all raises SourceError.

Manifest rows: {"image": "rel/path.png", "caption": "..."} or
{"image": ..., "question": "...", "answer": "..."} (always an understanding record).
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from typing import Any

from arm.config import ArmConfig, ImageFolderSourceConfig
from arm.data import s3
from arm.data.records import RawRecord
from arm.data.sources import SourceError, register

DESCRIBE = "describe the image."
SIDECAR_EXT = ".txt"


def _text_record(src: ImageFolderSourceConfig, ref: str, image: bytes, text: str | bytes,
                 meta: dict[str, Any]) -> RawRecord:
    if src.task == "generate":
        return RawRecord(source=src.name, ref=ref, task="generate", image=image, caption=text, meta=meta)
    return RawRecord(source=src.name, ref=ref, task="understand", image=image, question=DESCRIBE,
                     answer=text, meta=meta)


def _error(src: ImageFolderSourceConfig, ref: str, error: str, meta: dict[str, Any] | None = None) -> RawRecord:
    return RawRecord(source=src.name, ref=ref, task=src.task, meta=meta or {}, error=error)


def _too_large(path: str, size: int, limit: int) -> str:
    return f"file_too_large: {path}: {size} bytes > max_file_bytes {limit}"


def _read_checked(store: s3.Storage, path: str, size: int | None, limit: int) -> tuple[bytes | None, str | None]:
    """(bytes, None) or (None, error); the size is checked before anything is read."""
    if size is None:
        return None, f"missing_file: {path}"
    if size > limit:
        return None, _too_large(path, size, limit)
    try:
        return store.read(path), None
    except FileNotFoundError:  # vanished between listing and reading
        return None, f"missing_file: {path}"
    except OSError as e:
        return None, f"unreadable_file: {path}: {e}"


def _parse_row(line: bytes) -> tuple[dict[str, Any] | None, str | None]:
    """A manifest row as {image, caption | question+answer}, or an error reason."""
    try:
        row = json.loads(line.decode("utf-8"))
    except UnicodeDecodeError:
        return None, "not UTF-8"
    except json.JSONDecodeError as e:
        return None, f"invalid JSON: {e.msg} at column {e.colno}"
    if not isinstance(row, dict):
        return None, f"expected a JSON object, got {type(row).__name__}"
    image = row.get("image")
    if not isinstance(image, str) or not image:
        return None, "missing or non-string 'image'"
    rel = s3.relpath_inside(image)
    if rel is None:
        return None, f"'image' {image!r} must be a relative path inside the folder"
    for key in ("caption", "question", "answer"):
        if key in row and not isinstance(row[key], str):
            return None, f"'{key}' must be a string"
    if "question" in row or "answer" in row:
        if "question" not in row or "answer" not in row:
            return None, "'question' and 'answer' must come together"
        return {"image": rel, "question": row["question"], "answer": row["answer"]}, None
    if "caption" not in row:
        return None, "needs 'caption' or 'question' and 'answer'"
    return {"image": rel, "caption": row["caption"]}, None


def _lines(stream: io.BufferedIOBase, limit: int) -> Iterator[tuple[int, bytes, bool]]:
    """(line number, line, too long); a line over `limit` bytes is skipped, never held whole."""
    lineno = 0
    while True:
        line = stream.readline(limit + 1)
        if not line:
            return
        lineno += 1
        if len(line) > limit and not line.endswith(b"\n"):
            while (rest := stream.readline(1 << 20)) and not rest.endswith(b"\n"):
                pass
            yield lineno, b"", True
        else:
            yield lineno, line, False


def _manifest_path(src: ImageFolderSourceConfig) -> str:
    m = src.manifest or ""
    if s3.is_s3_url(m) or m.startswith("/"):
        return m
    return s3.join(src.path, m)


def _from_manifest(src: ImageFolderSourceConfig, cfg: ArmConfig, store: s3.Storage,
                   files: dict[str, int]) -> Iterator[RawRecord]:
    manifest = _manifest_path(src)
    if store.size(manifest) is None:
        raise SourceError(f"image_folder source {src.name!r}: manifest {manifest} not found")
    limit = cfg.data.max_file_bytes
    with store.open_stream(manifest) as raw:
        stream = raw if isinstance(raw, io.BufferedIOBase) else io.BufferedReader(raw)
        for lineno, line, too_long in _lines(stream, limit):
            ref = f"{manifest}:{lineno}"
            if too_long:
                yield _error(src, ref, f"bad_manifest_row: line {lineno}: longer than max_file_bytes {limit}")
                continue
            if not line.strip():
                continue
            row, reason = _parse_row(line)
            if row is None:
                yield _error(src, ref, f"bad_manifest_row: line {lineno}: {reason}")
                continue
            path = s3.join(src.path, row["image"])
            meta = {"path": row["image"]}
            data, err = _read_checked(store, path, files.get(row["image"]), limit)
            if err is not None:
                yield _error(src, ref, err, meta)
            elif "question" in row:
                yield RawRecord(source=src.name, ref=ref, task="understand", image=data,
                                question=row["question"], answer=row["answer"], meta=meta)
            else:
                yield _text_record(src, ref, data, row["caption"], meta)


def _from_sidecars(src: ImageFolderSourceConfig, cfg: ArmConfig, store: s3.Storage,
                   files: dict[str, int]) -> Iterator[RawRecord]:
    exts = tuple("." + e.lower().lstrip(".") for e in src.image_ext)
    limit = cfg.data.max_file_bytes
    images = [rel for rel in files if rel.lower().endswith(exts)]
    stems = {rel.rsplit(".", 1)[0] for rel in images}
    if not images:
        raise SourceError(f"image_folder source {src.name!r}: no images ({', '.join(exts)}) under {src.path}")
    for rel in images:  # `files` is sorted, so the order is deterministic
        path = s3.join(src.path, rel)
        meta = {"path": rel}
        side = rel.rsplit(".", 1)[0] + SIDECAR_EXT
        if side not in files:
            yield _error(src, path, f"missing_caption: {path}: no {side}", meta)
            continue
        text, err = _read_checked(store, s3.join(src.path, side), files[side], limit)
        if err is None:
            data, err = _read_checked(store, path, files[rel], limit)
        if err is not None:
            yield _error(src, path, err, meta)
        else:
            yield _text_record(src, path, data, text, meta)
    for rel in files:  # a caption whose image is gone is lost data: report it
        if rel.lower().endswith(SIDECAR_EXT) and rel.rsplit(".", 1)[0] not in stems:
            path = s3.join(src.path, rel)
            yield _error(src, path, f"missing_file: no image for caption {path}", {"path": rel})


@register("image_folder")
def read_image_folder(src: ImageFolderSourceConfig, cfg: ArmConfig) -> Iterator[RawRecord]:
    store = s3.Storage(cfg.storage)
    files = store.tree(src.path)
    if src.manifest:
        yield from _from_manifest(src, cfg, store, files)
    else:
        yield from _from_sidecars(src, cfg, store, files)
