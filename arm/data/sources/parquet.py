"""Parquet shards (file, folder or glob; local or s3://) read in row batches with pyarrow.

Shards are listed through fsspec (`Files`) and read through `arm.fs.arrow_fs_for` with
`pre_buffer`: pyarrow fetches the two columns' chunks of a window of consecutive row groups as
coalesced range requests (at most 32 MiB each), in parallel on its I/O pool. A window holds
row groups up to WINDOW_BYTES of those columns (at least one row group), so memory stays
bounded whatever the shard's size, and a store far away is asked few, large requests.

The image column holds encoded bytes, or a struct {bytes, path} as written by Hugging Face
`datasets`; the caption column is a string or bytes (bytes are left for curation to decode).
A shard that is not readable Parquet becomes one error record; a shard without the configured
columns raises SourceError, since that is a configuration mistake rather than bad data.
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import islice
from typing import Any

from fsspec.core import split_protocol

from arm.config import ArmConfig, ParquetSourceConfig
from arm.data.records import RawRecord
from arm.data.sources import SourceError, register
from arm.data.sources.files import Files
from arm.fs import arrow_fs_for

DESCRIBE = "describe the image."
SUFFIXES = (".parquet", ".parq", ".pq")
# Column-chunk bytes fetched ahead at once: pre_buffer holds every row group it is given.
WINDOW_BYTES = 64 << 20


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


def _windows(meta: Any, columns: list[str], limit: int) -> Iterator[list[int]]:
    """Consecutive row groups whose `columns` (compressed, nested fields included) fit in `limit` bytes."""
    chunks = [j for j in range(meta.num_columns) if meta.schema.column(j).path.split(".")[0] in columns]
    window: list[int] = []
    size = 0
    for group in range(meta.num_row_groups):
        rg = meta.row_group(group)
        n = sum(rg.column(j).total_compressed_size for j in chunks)
        if window and size + n > limit:
            yield window
            window, size = [], 0
        window.append(group)
        size += n
    if window:
        yield window


def _records(src: ParquetSourceConfig, cfg: ArmConfig, shard: str, pf: Any) -> Iterator[RawRecord]:
    _check_columns(pf.schema_arrow, src, shard)
    limit = cfg.data.max_file_bytes
    row = 0
    columns = [src.image_column, src.caption_column]
    batches = (batch for window in _windows(pf.metadata, columns, WINDOW_BYTES)
               for batch in pf.iter_batches(batch_size=src.batch_rows, row_groups=window, columns=columns))
    for batch in batches:
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

    files = Files(src.path, cfg.storage)
    entries = files.expand(SUFFIXES)
    afs, _ = arrow_fs_for(src.path, cfg.storage)  # one client for all the shards
    for entry in entries:
        try:
            with afs.open_input_file(split_protocol(entry.url)[1]) as f:
                yield from _records(src, cfg, entry.url, pq.ParquetFile(f, pre_buffer=True))
        except (pa.ArrowException, OSError) as e:
            # A failure of the store is a SourceError; anything else is this shard's damage:
            # rows already yielded stay valid, the rest of the shard is one rejection.
            err = files.translate(entry.url, e)
            if err is not None:
                raise err from e
            yield RawRecord(source=src.name, ref=entry.url, task=src.task,
                            meta={"shard": entry.url}, error=f"bad_shard: {entry.url}: {e}")
