"""Images in a folder (local or URL), captioned by JSONL manifests or sidecar .txt files.

Bytes are yielded exactly as stored: images are not decoded and sidecar text is not decoded,
because curation does both and files every failure under `rejections` with its reason.
Problems with single files (missing, oversized, malformed manifest row) become error records;
only a folder that cannot be listed at all raises SourceError.

Captions come from, in this order:
- `manifest:` a JSONL file (inside the folder if relative) whose image paths are relative to the folder;
- else Hugging Face ImageFolder's `metadata.jsonl` files anywhere in the tree, each naming images
  relative to its own folder (as `datasets.load_dataset("imagefolder", ...)` reads them);
- else a sidecar `name.txt` next to each `name.<image_ext>`.

A row names its image as `file_name` (Hugging Face) or `image`, and carries a caption as `text`
(Hugging Face's caption column) or `caption`, or a `question` and an `answer` (always an
understanding record); other columns are ignored.
"""

from __future__ import annotations

import io
import json
import posixpath
from collections.abc import Iterator
from typing import Any

from arm.config import ArmConfig, ImageFolderSourceConfig
from arm.data.records import RawRecord
from arm.data.sources import SourceError, register
from arm.data.sources.files import Files, relpath_inside
from arm.fs import is_remote

DESCRIBE = "describe the image."
SIDECAR_EXT = ".txt"
HF_METADATA = "metadata.jsonl"


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


def _read_checked(store: Files, path: str, size: int | None, limit: int) -> tuple[bytes | None, str | None]:
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
    image, reason = _one_of(row, "file_name", "image")
    if reason is not None:
        return None, reason
    if not isinstance(image, str) or not image:
        return None, "missing or non-string 'file_name' or 'image'"
    rel = relpath_inside(image)
    if rel is None:
        return None, f"image {image!r} must be a relative path inside the folder"
    for key in ("text", "caption", "question", "answer"):
        if key in row and not isinstance(row[key], str):
            return None, f"'{key}' must be a string"
    if "question" in row or "answer" in row:
        if "question" not in row or "answer" not in row:
            return None, "'question' and 'answer' must come together"
        return {"image": rel, "question": row["question"], "answer": row["answer"]}, None
    caption, reason = _one_of(row, "text", "caption")
    if reason is not None:
        return None, reason
    if caption is None:
        return None, "needs 'text' or 'caption', or 'question' and 'answer'"
    return {"image": rel, "caption": caption}, None


def _one_of(row: dict[str, Any], hf: str, ours: str) -> tuple[Any, str | None]:
    """The value under the Hugging Face key or ours; both at once is ambiguous."""
    if hf in row and ours in row:
        return None, f"both '{hf}' and '{ours}': give one"
    return row.get(hf, row.get(ours)), None


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


def _from_manifest(src: ImageFolderSourceConfig, cfg: ArmConfig, store: Files, files: dict[str, int],
                   reader: Files, manifest: str, base: str) -> Iterator[RawRecord]:
    """Rows of the manifest at URL `manifest` (read by `reader`); image paths are relative to
    the folder `base` of the tree."""
    if reader.size(manifest) is None:
        raise SourceError(f"image_folder source {src.name!r}: manifest {manifest} not found")
    limit = cfg.data.max_file_bytes
    with reader.open_stream(manifest) as stream:
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
            rel = posixpath.join(base, row["image"]) if base else row["image"]
            path = store.join(rel)
            meta = {"path": rel}
            data, err = _read_checked(store, path, files.get(rel), limit)
            if err is not None:
                yield _error(src, ref, err, meta)
            elif "question" in row:
                yield RawRecord(source=src.name, ref=ref, task="understand", image=data,
                                question=row["question"], answer=row["answer"], meta=meta)
            else:
                yield _text_record(src, ref, data, row["caption"], meta)


def _from_sidecars(src: ImageFolderSourceConfig, cfg: ArmConfig, store: Files,
                   files: dict[str, int]) -> Iterator[RawRecord]:
    exts = tuple("." + e.lower().lstrip(".") for e in src.image_ext)
    limit = cfg.data.max_file_bytes
    images = [rel for rel in files if rel.lower().endswith(exts)]
    stems = {rel.rsplit(".", 1)[0] for rel in images}
    if not images:
        raise SourceError(f"image_folder source {src.name!r}: no images ({', '.join(exts)}) under {src.path}")
    for rel in images:  # `files` is sorted, so the order is deterministic
        path = store.join(rel)
        meta = {"path": rel}
        side = rel.rsplit(".", 1)[0] + SIDECAR_EXT
        if side not in files:
            yield _error(src, path, f"missing_caption: {path}: no {side}", meta)
            continue
        text, err = _read_checked(store, store.join(side), files[side], limit)
        if err is None:
            data, err = _read_checked(store, path, files[rel], limit)
        if err is not None:
            yield _error(src, path, err, meta)
        else:
            yield _text_record(src, path, data, text, meta)
    for rel in files:  # a caption whose image is gone is lost data: report it
        if rel.lower().endswith(SIDECAR_EXT) and rel.rsplit(".", 1)[0] not in stems:
            path = store.join(rel)
            yield _error(src, path, f"missing_file: no image for caption {path}", {"path": rel})


@register("image_folder")
def read_image_folder(src: ImageFolderSourceConfig, cfg: ArmConfig) -> Iterator[RawRecord]:
    store = Files(src.path, cfg.storage)
    files = store.tree()
    if src.manifest:
        m = src.manifest
        if is_remote(m) or m.startswith("/"):  # elsewhere, maybe on another store
            yield from _from_manifest(src, cfg, store, files, Files(m, cfg.storage), m, "")
        else:
            yield from _from_manifest(src, cfg, store, files, store, store.join(m), "")
        return
    metadata = [rel for rel in files if posixpath.basename(rel) == HF_METADATA]
    if metadata:
        for rel in metadata:  # sorted, so the order is deterministic
            yield from _from_manifest(src, cfg, store, files, store, store.join(rel), posixpath.dirname(rel))
    else:
        yield from _from_sidecars(src, cfg, store, files)
