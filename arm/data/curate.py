"""The curate stage: sources -> stats (once, in parallel) -> SQL filters -> curated store.

    curate(cfg, map_chunks=None, chunk_size=CHUNK) -> metrics dict; writes cfg.data.store and cfg.data.metrics.

Only the stats (decode, hash, measure: the expensive part) run in parallel, chunk by chunk, through
a `map_chunks` strategy: a local process pool by default (`process_pool_map`), or whatever the
caller supplies — flows/curate.py maps the same `process_chunk` as Prefect tasks on a Dask
cluster when `data.executor: dask`. Reading sources, filtering and the store write run here, in
this process, whatever the strategy, so every strategy gives the same store.

Every input record ends in exactly one of `samples` or `rejections`; a source that cannot be
read at all (SourceError: unreachable bucket, missing root) counts as one input and becomes one
`source_unreachable` rejection, and the run goes on with the other sources. The counts are
reconciled per source before the new store replaces the old one, and the stage fails if they
do not. The store is built in a temporary directory and swapped in atomically.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import datetime as dt
import hashlib
import json
import logging
import multiprocessing as mp
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol, TypeVar

import duckdb
import numpy as np

import arm
from arm.config import ArmConfig
from arm.data.filters import apply_filters, predicate_filters
from arm.data.records import RawRecord
from arm.data.sources import SourceError, iter_source
from arm.data.stats import (
    REJECTION_SCHEMA,
    STATS_SCHEMA,
    ChunkResult,
    StatsParams,
    init_worker,
    process_chunk,
)
from arm.data.store import DB_NAME, IMAGES_DIR, ImageBuffer, RowBuffer, write_shards
from arm.io import atomic_path, atomic_write_json
from arm.progress import progress_bar

log = logging.getLogger(__name__)
DUCKDB_MEMORY_LIMIT = "768MB"
CHUNK = 256  # records per pool task by default: big enough to amortise pickling, small enough to stream
STAGE = "curate"


class CurateError(RuntimeError):
    """The stage could not produce a consistent store (the old one, if any, is left in place)."""


# Where and how widely the stats run, not what they are: every executor gives the same store.
EXECUTION_FIELDS = {"workers", "executor", "dask_address", "dask_workers", "dask_chunk_size"}

Chunk = list[tuple[int, RawRecord]]
# chunks (in input order), params -> one ChunkResult per chunk, in the same order, lazily.
MapChunks = Callable[[Iterator[Chunk], StatsParams], Iterator[ChunkResult]]
T = TypeVar("T", covariant=True)


class Pending(Protocol[T]):
    """A submitted unit of work: concurrent.futures.Future and Prefect futures both fit."""

    def result(self) -> T: ...


def params_hash(cfg: ArmConfig) -> str:
    """What the store's content depends on: the data section and the world the shapes source draws."""
    data = cfg.data.model_dump(mode="json", exclude=EXECUTION_FIELDS)
    blob = json.dumps({"data": data, "world": cfg.world.model_dump(mode="json"),
                       "storage": cfg.storage.model_dump(mode="json")}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def _source_ref(src: Any) -> str:
    return str(getattr(src, "path", None) or getattr(src, "root", None) or src.name)


def _records(cfg: ArmConfig, counts: dict[str, int]) -> Iterator[tuple[int, RawRecord]]:
    """All records of all sources in config order, numbered; a failing source becomes one record."""
    ord_ = 0
    for src in cfg.data.sources:
        counts.setdefault(src.name, 0)
        try:
            for rec in iter_source(src, cfg):
                if rec.source != src.name:
                    rec.source = src.name  # counts are per configured source name
                counts[src.name] += 1
                yield ord_, rec
                ord_ += 1
        except (SourceError, OSError) as e:
            log.warning("source %s (%s) failed after %d records: %s", src.name, src.type, counts[src.name], e)
            counts[src.name] += 1
            yield ord_, RawRecord(source=src.name, ref=_source_ref(src), task=None,  # type: ignore[arg-type]
                                  error=f"source_unreachable: {src.type} source {src.name!r}: {e}")
            ord_ += 1


def _chunks(records: Iterator[tuple[int, RawRecord]], size: int) -> Iterator[Chunk]:
    chunk: Chunk = []
    for item in records:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def windowed(chunks: Iterator[Chunk], submit: Callable[[Chunk], Pending[ChunkResult]],
             window: int) -> Iterator[ChunkResult]:
    """Results in input order with at most `window` chunks submitted and not yet consumed, so the
    input is read only as fast as results are used (Pool.imap or Client.map would read it all ahead
    and defeat streaming). Each executor only says how to submit one chunk."""
    pending: collections.deque[Pending[ChunkResult]] = collections.deque()
    for chunk in chunks:
        pending.append(submit(chunk))
        if len(pending) >= max(1, window):
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def process_pool_map(workers: int) -> MapChunks:
    """The default executor: this process (workers <= 1) or a local pool of spawned processes."""

    def map_chunks(chunks: Iterator[Chunk], params: StatsParams) -> Iterator[ChunkResult]:
        if workers <= 1:
            for chunk in chunks:
                yield process_chunk(chunk, params)
            return
        # spawn, not fork: Prefect and DuckDB hold threads and locks a forked child must not inherit.
        ctx = mp.get_context("spawn")
        with cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=init_worker,
                                    initargs=(params,)) as pool:
            yield from windowed(chunks, lambda chunk: pool.submit(process_chunk, chunk), 3 * workers)

    return map_chunks


def _build(cfg: ArmConfig, root: Path, progress: bool, logger: logging.Logger,
           map_chunks: MapChunks, chunk_size: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    started = dt.datetime.now(dt.timezone.utc)
    staging = root / "_staging"
    staging.mkdir(parents=True)
    stats_buf = RowBuffer(staging / "stats.parquet", STATS_SCHEMA)
    rej_buf = RowBuffer(staging / "rejections.parquet", REJECTION_SCHEMA)
    img_buf = ImageBuffer(staging / "images.parquet")
    counts: dict[str, int] = {}
    params = StatsParams.from_config(cfg)

    n = n_chunks = 0
    bar = progress_bar("curate", unit="rec", logger=logger, enabled=progress)
    for res in map_chunks(_chunks(_records(cfg, counts), chunk_size), params):
        stats_buf.add(res.rows)
        rej_buf.add(res.rejections)
        img_buf.add(res.images)
        n += res.n
        n_chunks += 1
        bar.update(res.n)
    bar.close()
    for buf in (stats_buf, rej_buf, img_buf):
        buf.close()
    t_stats = time.perf_counter() - t0
    logger.info("curate: stats of %d records in %.1fs; filtering", n, t_stats)

    db_path = root / DB_NAME
    con = duckdb.connect(str(db_path))
    try:
        metrics = _finish(cfg, con, root, staging, counts, logger)
        t_total = time.perf_counter() - t0
        metrics["seconds"] = {"stats": round(t_stats, 3), "filter_and_write": round(t_total - t_stats, 3),
                              "total": round(t_total, 3)}
        metrics["samples_per_s"] = round(n / t_total, 1) if t_total > 0 else None
        metrics["executor"] = {"kind": cfg.data.executor, "chunks": n_chunks, "chunk_size": chunk_size}
        finished = dt.datetime.now(dt.timezone.utc)
        con.execute(
            """CREATE TABLE runs (stage VARCHAR, params_hash VARCHAR, arm_version VARCHAR,
               started_at TIMESTAMPTZ, finished_at TIMESTAMPTZ, duration_s DOUBLE,
               n_in BIGINT, n_kept BIGINT, n_rejected BIGINT, counts JSON)""")
        con.execute(
            "INSERT INTO runs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [STAGE, metrics["params_hash"], arm.__version__, started, finished, round(t_total, 3),
             metrics["n_in"], metrics["n_kept"], metrics["n_rejected"],
             json.dumps({"by_source": metrics["by_source"], "seconds": metrics["seconds"]}, sort_keys=True)],
        )
        con.execute("CHECKPOINT")
    finally:
        con.close()
    shutil.rmtree(staging)
    return metrics


def _q(path: Path) -> str:
    """A path as a SQL string literal (quotes doubled)."""
    return "'" + path.as_posix().replace("'", "''") + "'"


def _finish(cfg: ArmConfig, con: duckdb.DuckDBPyConnection, root: Path, staging: Path,
            counts: dict[str, int], logger: logging.Logger) -> dict[str, Any]:
    con.execute(f"SET threads TO {max(1, cfg.data.workers)}")
    # Bounded: past this DuckDB spills to the staging folder, so memory stays flat in N.
    con.execute(f"SET memory_limit = '{DUCKDB_MEMORY_LIMIT}'")
    # Every table that is kept is written with ORDER BY; intermediate ones need no order.
    con.execute("SET preserve_insertion_order = false")
    con.execute(f"SET temp_directory = {_q(staging / 'duckdb_tmp')}")
    con.execute(f"CREATE VIEW stats AS SELECT * FROM read_parquet({_q(staging / 'stats.parquet')})")
    con.execute(f"""CREATE TEMP TABLE image_stage AS
        SELECT file_row_number AS stage_row, sha256, width, height, phash, thumb
        FROM read_parquet({_q(staging / 'images.parquet')}, file_row_number = true)""")
    con.execute("""CREATE TEMP TABLE image_index AS
        SELECT sha256, arg_min(stage_row, stage_row) AS stage_row, any_value(phash) AS phash,
               any_value(thumb) AS thumb, any_value(width) AS width, any_value(height) AS height
        FROM image_stage GROUP BY sha256""")
    apply_filters(con, cfg.data.filters)

    cols = [c for c in STATS_SCHEMA.names if c not in ("split_key", "text_sha")]
    select = ", ".join(("meta::JSON AS meta" if c == "meta" else c) for c in cols)
    # Wide columns (texts, meta) are read from the staging file once, here, for kept rows only.
    con.execute(f"CREATE TABLE samples AS SELECT {select} FROM stats WHERE ord IN (SELECT ord FROM kept) ORDER BY ord")
    con.execute(f"""
        CREATE TABLE rejections AS
        SELECT r.ord, r.source, r.ref, r.task, r.reason, r.detail, r.stage FROM (
            SELECT ord, source, ref, task, reason, detail, stage
            FROM read_parquet({_q(staging / 'rejections.parquet')})
            UNION ALL
            SELECT s.ord, s.source, s.ref, s.task, f.reason, f.detail, f.stage
            FROM filtered f JOIN stats s USING (ord)
        ) r ORDER BY r.ord""")

    # Images: each referenced image once, at its first staging row, shards in first-use order.
    keep = con.execute("""
        SELECT i.stage_row FROM image_index i
        WHERE i.sha256 IN (SELECT image_sha FROM samples UNION SELECT source_image_sha FROM samples)
        ORDER BY i.stage_row""").fetchnumpy()["stage_row"]
    index = write_shards(staging / "images.parquet", np.asarray(keep), root / IMAGES_DIR, cfg.data.shard_size)
    con.register("shard_index", index)
    con.execute("""
        CREATE TABLE images AS
        SELECT x.sha256, x.shard, x.row, i.width, i.height, x.bytes, i.phash, i.thumb
        FROM shard_index x JOIN image_index i USING (sha256) ORDER BY x.shard, x.row""")
    con.unregister("shard_index")
    con.execute("DROP VIEW stats")  # it points into the staging folder, which is about to go

    return _reconcile(cfg, con, counts, logger)


def _reconcile(cfg: ArmConfig, con: duckdb.DuckDBPyConnection, counts: dict[str, int],
               logger: logging.Logger) -> dict[str, Any]:
    kept = dict(con.execute("SELECT source, count(*) FROM samples GROUP BY 1").fetchall())
    rejected = dict(con.execute("SELECT source, count(*) FROM rejections GROUP BY 1").fetchall())
    reasons: dict[str, dict[str, int]] = {}
    for source, reason, k in con.execute("SELECT source, reason, count(*) FROM rejections GROUP BY 1, 2 ORDER BY 1, 2").fetchall():
        reasons.setdefault(source, {})[reason] = int(k)
    by_source, bad = {}, []
    for name in sorted(set(counts) | set(kept) | set(rejected)):
        n_in, k, r = counts.get(name, 0), int(kept.get(name, 0)), int(rejected.get(name, 0))
        by_source[name] = {"in": n_in, "kept": k, "rejected": r, "reconciled": n_in == k + r,
                           "rejected_by_reason": reasons.get(name, {})}
        if n_in != k + r:
            bad.append(f"{name}: in {n_in} != kept {k} + rejected {r}")
    n_samples_unique = con.execute("SELECT count(*) = count(DISTINCT id) FROM samples").fetchone()[0]
    if bad or not n_samples_unique:
        raise CurateError("curated counts do not reconcile (store not written): " + "; ".join(bad or ["duplicate ids"]))
    for name, c in by_source.items():
        logger.info("curate: source %s: in %d = kept %d + rejected %d %s", name, c["in"], c["kept"], c["rejected"],
                    c["rejected_by_reason"] or "")

    def counts_of(sql: str) -> dict[str, int]:
        return {str(a): int(b) for a, b in con.execute(sql).fetchall()}

    return {
        "stage": STAGE,
        "store": str(cfg.data.store),
        "params_hash": params_hash(cfg),
        "n_in": sum(counts.values()),
        "n_kept": sum(kept.values()),
        "n_rejected": sum(rejected.values()),
        "n_images": int(con.execute("SELECT count(*) FROM images").fetchone()[0]),
        "image_bytes": int(con.execute("SELECT coalesce(sum(bytes), 0) FROM images").fetchone()[0]),
        "by_source": by_source,
        "kept_by_task": counts_of("SELECT task, count(*) FROM samples GROUP BY 1 ORDER BY 1"),
        "kept_by_split": counts_of("SELECT split, count(*) FROM samples GROUP BY 1 ORDER BY 1"),
        "rejected_by_reason": counts_of("SELECT reason, count(*) FROM rejections GROUP BY 1 ORDER BY 1"),
        "filters": [{"reason": f.reason, "predicate": f.predicate} for f in predicate_filters(cfg.data.filters)],
        "workers": cfg.data.workers,
    }


def curate(cfg: ArmConfig, progress: bool = True, logger: logging.Logger | None = None,
           map_chunks: MapChunks | None = None, chunk_size: int = CHUNK) -> dict[str, Any]:
    """Builds the curated store at cfg.data.store (atomically) and returns its metrics.

    `map_chunks` computes the stats of chunks of `chunk_size` records (default:
    process_pool_map(cfg.data.workers)); the store depends on neither."""
    logger = logger or log
    if chunk_size < 1:
        raise CurateError(f"chunk_size must be >= 1, got {chunk_size}")
    if map_chunks is None:
        if cfg.data.executor != "process":
            raise CurateError(f"data.executor={cfg.data.executor!r} runs through the Prefect flow (`arm curate` or "
                              "flows.curate.curate_flow), which supplies its map_chunks; curate() alone runs "
                              "data.executor=process")
        map_chunks = process_pool_map(cfg.data.workers)
    names = [s.name for s in cfg.data.sources]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise CurateError(f"data.sources: source names must be unique, repeated: {dup}")
    store = Path(cfg.data.store)
    with atomic_path(store) as tmp:
        metrics = _build(cfg, tmp, progress, logger, map_chunks, chunk_size)
    atomic_write_json(cfg.data.metrics, metrics)
    logger.info("curate: %d in, %d kept, %d rejected in %.1fs (%.0f samples/s) -> %s", metrics["n_in"],
                metrics["n_kept"], metrics["n_rejected"], metrics["seconds"]["total"], metrics["samples_per_s"], store)
    return metrics
