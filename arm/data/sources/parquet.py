"""Parquet shards (file, folder or glob; local or s3://) read in row batches with pyarrow.

The image column holds encoded bytes, or a struct {bytes, path} as written by Hugging Face
`datasets`; the caption column is a string or bytes (bytes are left for curation to decode).
A shard that is not readable Parquet becomes one error record; a shard without the configured
columns raises SourceError, since that is a configuration mistake rather than bad data.
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import islice
from typing import Any

from arm.config import ArmConfig, ParquetSourceConfig
from arm.data import s3
from arm.data.records import RawRecord
from arm.data.sources import SourceError, register

DESCRIBE = "describe the image."
SUFFIXES = (".parquet", ".parq", ".pq")


def _image_bytes(value: Any) -> tuple[bytes | None, str | None]:
    """Encoded image bytes from a cell, or an error reason."""
    if value is None:
        return None, "missing_image"
    if isinstance(value, dict):  # HF datasets Image feature: {"bytes": ..., "path": ...}
        data = value.get("bytes")
        if data is None:
            where = value.get("path")
            return None, f"missing_image: no embedded bytes (path {where!r} is not resolved)"
        value = data
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value), None
    return None, f"bad_image_cell: expected bytes, got {type(value).__name__}"


def _check_columns(schema: Any, src: ParquetSourceConfig, shard: str) -> None:
    import pyarrow as pa

    names = schema.names
    for col in (src.image_column, src.caption_column):
        if col not in names:
            raise SourceError(f"parquet source {src.name!r}: {shard} has no column {col!r} (columns: {names})")
    img = schema.field(src.image_column).type
    ok = (pa.types.is_binary(img) or pa.types.is_large_binary(img) or pa.types.is_binary_view(img)
          or (pa.types.is_struct(img) and img.get_field_index("bytes") >= 0))
    if not ok:
        raise SourceError(
            f"parquet source {src.name!r}: {shard}: column {src.image_column!r} has type {img}; "
            "expected binary or struct<bytes, path>"
        )


def _records(src: ParquetSourceConfig, cfg: ArmConfig, shard: str, pf: Any) -> Iterator[RawRecord]:
    _check_columns(pf.schema_arrow, src, shard)
    limit = cfg.data.max_file_bytes
    row = 0
    for batch in pf.iter_batches(batch_size=src.batch_rows, columns=[src.image_column, src.caption_column]):
        images = batch.column(src.image_column).to_pylist()
        captions = batch.column(src.caption_column).to_pylist()
        for image, text in zip(images, captions):
            ref = f"{shard}#{row}"
            meta = {"shard": shard, "row": row}
            row += 1
            data, err = _image_bytes(image)
            if err is None and len(data) > limit:
                err = f"file_too_large: {ref}: image cell of {len(data)} bytes > max_file_bytes {limit}"
            if err is None and text is None:
                err = "missing_caption"
            if err is None and not isinstance(text, (str, bytes)):
                err = f"bad_caption_cell: expected string or bytes, got {type(text).__name__}"
            if err is not None:
                if ":" not in err:
                    err = f"{err}: {ref}"
                yield RawRecord(source=src.name, ref=ref, task=src.task, meta=meta, error=err)
            elif src.task == "generate":
                yield RawRecord(source=src.name, ref=ref, task="generate", image=data, caption=text, meta=meta)
            else:
                yield RawRecord(source=src.name, ref=ref, task="understand", image=data,
                                question=DESCRIBE, answer=text, meta=meta)


@register("parquet")
def read_parquet(src: ParquetSourceConfig, cfg: ArmConfig) -> Iterator[RawRecord]:
    # islice stops pulling at the quota: shards past it are never opened
    return islice(_read_all(src, cfg), src.limit)


def _read_all(src: ParquetSourceConfig, cfg: ArmConfig) -> Iterator[RawRecord]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    store = s3.Storage(cfg.storage)
    for entry in store.expand(src.path, SUFFIXES):
        with store.open_random(entry.path, entry.size) as f:
            try:
                pf = pq.ParquetFile(f)
                yield from _records(src, cfg, entry.path, pf)
            except (pa.ArrowException, OSError) as e:
                # Rows already yielded stay valid; the rest of this shard is one rejection.
                # A network failure is a SourceError, which pyarrow passes through unchanged.
                yield RawRecord(source=src.name, ref=entry.path, task=src.task,
                                meta={"shard": entry.path}, error=f"bad_shard: {entry.path}: {e}")
