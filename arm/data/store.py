"""The curated store: one DuckDB file for rows, content-addressed Parquet shards for pixels.

Layout under `cfg.data.store` (default `data/curated/`):

    store.duckdb                  samples, rejections, runs, images (sha256 -> shard, row)
    images/shard-00000.parquet    sha256, png, width, height   (each image once, by pixel hash)

Why Parquet shards rather than BLOBs in DuckDB: the database holds only what is queried
(texts, stats, splits, decisions), so filters, validation and `samples()` scan small columns
and the file stays tens of MB even for millions of samples, while pixels, which are only ever
fetched by key, live in append-only shards that pyarrow writes sequentially as the run streams,
so memory stays flat in N. A reader fetches one row group (about 256 images) instead of a
table, the shards are the format every training stack reads (pyarrow, DuckDB's `read_parquet`,
Spark, `datasets`), can sit on S3 and be read by range requests, and DVC hashes them file by
file, so a re-run that changes little re-uploads little. Content addressing (sha256 of the
normalised pixels) stores an image once however many samples use it. The cost of two kinds of
files is consistency between them, which is why the whole store is built in a temporary
directory and swapped in atomically at the end; BLOBs would give one transactional file, but one
that grows with the pixels and rewrites large blocks on every checkpoint.
"""

from __future__ import annotations

import bisect
import io
import os
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from PIL import Image

from arm.data.records import TASKS
from arm.data.stats import IMAGE_SCHEMA, ImageStats

DB_NAME = "store.duckdb"
IMAGES_DIR = "images"
SHARD_SCHEMA = pa.schema(
    [("sha256", pa.string()), ("png", pa.binary()), ("width", pa.int32()), ("height", pa.int32())]
)
SPLITS = ("train", "val", "test")
ROW_GROUP_ROWS = 256
ROW_GROUP_BYTES = 32 << 20


def shard_name(i: int) -> str:
    return f"shard-{i:05d}.parquet"


# ----------------------------------------------------------------------------- writing


class RowBuffer:
    """Rows appended in order, flushed to one Parquet file in bounded batches."""

    def __init__(self, path: Path, schema: pa.Schema, flush_rows: int = 8192):
        self.path, self.schema, self.flush_rows = path, schema, flush_rows
        self.rows: list[tuple] = []
        self.writer: pq.ParquetWriter | None = None
        self.count = 0

    def add(self, rows: Iterable[tuple]) -> None:
        self.rows.extend(rows)
        if len(self.rows) >= self.flush_rows:
            self.flush()

    def flush(self) -> None:
        if self.writer is None:
            self.writer = pq.ParquetWriter(self.path, self.schema)
        if self.rows:
            cols = list(zip(*self.rows))
            table = pa.table([pa.array(c, type=f.type) for c, f in zip(cols, self.schema)], schema=self.schema)
            self.writer.write_table(table)
            self.count += len(self.rows)
            self.rows = []

    def close(self) -> None:
        self.flush()  # also creates an empty file when nothing came, so SQL can read it
        self.writer.close()


class ImageBuffer:
    """Staging images (with pHash and thumbnail) in arrival order; duplicates allowed here."""

    def __init__(self, path: Path):
        self.path = path
        self.items: list[ImageStats] = []
        self.bytes = 0
        self.writer: pq.ParquetWriter | None = None
        self.count = 0

    def add(self, images: Iterable[ImageStats]) -> None:
        for im in images:
            self.items.append(im)
            self.bytes += len(im.png)
        if len(self.items) >= ROW_GROUP_ROWS * 4 or self.bytes >= ROW_GROUP_BYTES:
            self.flush()

    def flush(self) -> None:
        if self.writer is None:
            self.writer = pq.ParquetWriter(self.path, IMAGE_SCHEMA)
        if self.items:
            it = self.items
            table = pa.table(
                [
                    pa.array([i.sha256 for i in it], pa.string()),
                    pa.array([i.png for i in it], pa.binary()),
                    pa.array([i.width for i in it], pa.int32()),
                    pa.array([i.height for i in it], pa.int32()),
                    pa.array([i.phash for i in it], pa.uint64()),
                    pa.array([list(i.thumb) for i in it], pa.list_(pa.uint8())),
                ],
                schema=IMAGE_SCHEMA,
            )
            self.writer.write_table(table)
            self.count += len(it)
            self.items, self.bytes = [], 0

    def close(self) -> None:
        self.flush()
        self.writer.close()


def write_shards(staging: Path, keep_rows: np.ndarray, out_dir: Path, shard_size: int) -> pa.Table:
    """Copies the staging rows `keep_rows` (sorted) into shards of `shard_size` images, in order.

    Streams batch by batch: memory holds about one row group of PNGs, never the whole set.
    Row groups hold ROW_GROUP_ROWS images (fewer at the end of a shard or when they get large),
    so a reader fetches one group to get one image. Returns the index (sha256, shard, row, bytes).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    keep_rows = np.asarray(keep_rows, dtype=np.int64)
    index: list[pa.Table] = []
    state = {"writer": None, "shard": -1, "in_shard": 0}
    pending: list[pa.Table] = []

    def write_pending(final: bool) -> None:
        nonlocal pending
        if not pending:
            return
        t = pa.concat_tables(pending)
        nbytes = pc.sum(pc.binary_length(t.column("png"))).as_py() or 0
        rows = t.num_rows if (final or nbytes >= ROW_GROUP_BYTES) else (t.num_rows // ROW_GROUP_ROWS) * ROW_GROUP_ROWS
        if rows:
            state["writer"].write_table(t.slice(0, rows), row_group_size=ROW_GROUP_ROWS)
        pending = [t.slice(rows)] if rows < t.num_rows else []

    def open_shard() -> None:
        if state["writer"] is not None:
            write_pending(final=True)
            state["writer"].close()
        state["shard"] += 1
        state["in_shard"] = 0
        state["writer"] = pq.ParquetWriter(out_dir / shard_name(state["shard"]), SHARD_SCHEMA)

    base = 0
    for batch in pq.ParquetFile(staging).iter_batches(batch_size=ROW_GROUP_ROWS, columns=list(SHARD_SCHEMA.names)):
        lo, hi = np.searchsorted(keep_rows, [base, base + batch.num_rows])
        local = keep_rows[lo:hi] - base
        base += batch.num_rows
        if not len(local):
            continue
        table = pa.Table.from_batches([batch]).take(pa.array(local)).cast(SHARD_SCHEMA)
        off = 0
        while off < table.num_rows:
            if state["writer"] is None or state["in_shard"] == shard_size:
                open_shard()
            n = min(shard_size - state["in_shard"], table.num_rows - off)
            seg = table.slice(off, n)
            index.append(pa.table({
                "sha256": seg.column("sha256"),
                "shard": pa.array(np.full(n, state["shard"], dtype=np.int32)),
                "row": pa.array(np.arange(state["in_shard"], state["in_shard"] + n, dtype=np.int32)),
                "bytes": pc.cast(pc.binary_length(seg.column("png")), pa.int64()),
            }))
            pending.append(seg)
            state["in_shard"] += n
            off += n
            write_pending(final=False)
    if state["writer"] is not None:
        write_pending(final=True)
        state["writer"].close()
    empty = pa.schema([("sha256", pa.string()), ("shard", pa.int32()), ("row", pa.int32()), ("bytes", pa.int64())])
    return pa.concat_tables(index) if index else empty.empty_table()


# ----------------------------------------------------------------------------- reading


class CuratedStore:
    """Read-only access to a curated store. Safe to use after fork: each process reconnects."""

    def __init__(self, root: str | Path, cache_row_groups: int = 16):
        self.root = Path(root)
        self.db_path = self.root / DB_NAME
        if not self.db_path.is_file():
            raise FileNotFoundError(f"no curated store at {self.root} ({DB_NAME} missing; run `arm curate`)")
        self._pid = -1
        self._con: duckdb.DuckDBPyConnection | None = None
        self._files: dict[int, tuple[pq.ParquetFile, list[int]]] = {}
        self._groups: OrderedDict[tuple[int, int], dict[str, bytes]] = OrderedDict()
        self._cache_size = cache_row_groups

    # -- connection -----------------------------------------------------------------

    @property
    def con(self) -> duckdb.DuckDBPyConnection:
        if self._con is None or self._pid != os.getpid():
            self._con = duckdb.connect(str(self.db_path), read_only=True)
            self._pid = os.getpid()
            self._files, self._groups = {}, OrderedDict()
        return self._con

    def close(self) -> None:
        if self._con is not None and self._pid == os.getpid():
            self._con.close()
        self._con = None

    def __enter__(self) -> "CuratedStore":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def query(self, sql: str, params: Sequence[Any] | None = None) -> pd.DataFrame:
        return self.con.execute(sql, params or []).df()

    # -- rows -----------------------------------------------------------------------

    def samples(self, split: str | None = None, task: str | None = None, columns: Sequence[str] | None = None) -> pd.DataFrame:
        """Kept samples in input order, optionally one split and/or one task."""
        if split is not None and split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; known: {list(SPLITS)}")
        if task is not None and task not in TASKS:
            raise ValueError(f"unknown task {task!r}; known: {list(TASKS)}")
        cols = "*"
        if columns:
            known = set(self.con.execute("SELECT * FROM samples LIMIT 0").df().columns)
            bad = [c for c in columns if c not in known]
            if bad:
                raise ValueError(f"unknown sample columns {bad}")
            cols = ", ".join(f'"{c}"' for c in columns)
        where, params = [], []
        if split is not None:
            where.append("split = ?")
            params.append(split)
        if task is not None:
            where.append("task = ?")
            params.append(task)
        sql = f"SELECT {cols} FROM samples" + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY ord"
        return self.query(sql, params)

    def rejections(self) -> pd.DataFrame:
        return self.query("SELECT * FROM rejections ORDER BY ord")

    def runs(self) -> pd.DataFrame:
        return self.query("SELECT * FROM runs ORDER BY started_at")

    def summary(self) -> dict[str, Any]:
        def counts(sql: str) -> dict:
            return {str(k): int(v) for k, v in self.con.execute(sql).fetchall()}

        def nested(sql: str) -> dict:
            out: dict[str, dict[str, int]] = {}
            for a, b, n in self.con.execute(sql).fetchall():
                out.setdefault(str(a), {})[str(b)] = int(n)
            return out

        return {
            "samples": int(self.con.execute("SELECT count(*) FROM samples").fetchone()[0]),
            "rejected": int(self.con.execute("SELECT count(*) FROM rejections").fetchone()[0]),
            "images": int(self.con.execute("SELECT count(*) FROM images").fetchone()[0]),
            "by_source": counts("SELECT source, count(*) FROM samples GROUP BY 1 ORDER BY 1"),
            "by_task": counts("SELECT task, count(*) FROM samples GROUP BY 1 ORDER BY 1"),
            "by_split": counts("SELECT split, count(*) FROM samples GROUP BY 1 ORDER BY 1"),
            "by_task_split": nested("SELECT task, split, count(*) FROM samples GROUP BY 1, 2 ORDER BY 1, 2"),
            "rejected_by_reason": counts("SELECT reason, count(*) FROM rejections GROUP BY 1 ORDER BY 1"),
            "rejected_by_source": nested(
                "SELECT source, reason, count(*) FROM rejections GROUP BY 1, 2 ORDER BY 1, 2"),
        }

    # -- images ---------------------------------------------------------------------

    def _shard(self, shard: int) -> tuple[pq.ParquetFile, list[int]]:
        if shard not in self._files:
            pf = pq.ParquetFile(self.root / IMAGES_DIR / shard_name(shard))
            starts = [0]
            for g in range(pf.metadata.num_row_groups):
                starts.append(starts[-1] + pf.metadata.row_group(g).num_rows)
            self._files[shard] = (pf, starts)
        return self._files[shard]

    def _row_group(self, shard: int, group: int) -> dict[str, bytes]:
        key = (shard, group)
        if key in self._groups:
            self._groups.move_to_end(key)
            return self._groups[key]
        pf, _ = self._shard(shard)
        t = pf.read_row_group(group, columns=["sha256", "png"])
        data = dict(zip(t.column("sha256").to_pylist(), t.column("png").to_pylist()))
        self._groups[key] = data
        while len(self._groups) > self._cache_size:
            self._groups.popitem(last=False)
        return data

    def image_bytes(self, shas: Sequence[str]) -> list[bytes]:
        """PNG bytes of each sha, in order; reads each needed row group once."""
        shas = list(shas)
        if not shas:
            return []
        rows = self.con.execute(
            "SELECT sha256, shard, row FROM images WHERE sha256 IN (SELECT unnest(?::VARCHAR[]))", [shas]
        ).fetchall()
        where = {s: (shard, row) for s, shard, row in rows}
        missing = [s for s in shas if s not in where]
        if missing:
            raise KeyError(f"{len(missing)} image(s) not in store {self.root}: {missing[:3]}")
        out: dict[str, bytes] = {}
        for s in sorted(set(shas), key=lambda x: where[x]):
            shard, row = where[s]
            _, starts = self._shard(shard)
            group = bisect.bisect_right(starts, row) - 1
            data = self._row_group(shard, group)
            if s not in data:
                raise KeyError(f"image {s} indexed at {shard_name(shard)} row {row} but not found there (store corrupt)")
            out[s] = data[s]
        return [out[s] for s in shas]

    def load_images(self, shas: Sequence[str]) -> list[Image.Image]:
        images = []
        for b in self.image_bytes(shas):
            im = Image.open(io.BytesIO(b))
            im.load()
            images.append(im.convert("RGB") if im.mode != "RGB" else im)
        return images

    def load_image(self, sha: str) -> Image.Image:
        return self.load_images([sha])[0]
