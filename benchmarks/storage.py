"""Benchmark of the Parquet source over S3: the fsspec/pyarrow reader against the former boto3 one.

    .venv/bin/python benchmarks/storage.py                  # 100 MB in 2 shards, 5 rounds
    .venv/bin/python benchmarks/storage.py --mb 20 --rounds 1

A SeaweedFS server on 127.0.0.1 (started as tests/s3_servers.py does) holds `--mb` MB of Parquet
shards whose image cells are random bytes (incompressible, like encoded images) in row groups of
`--row-group-rows` rows. Both readers run the parquet source end to end, records included:

- after: `arm.data.sources.parquet` as it is (s3fs listing, pyarrow's S3 client, `pre_buffer`
  over windows of row groups);
- before: the same source as of commit `--before` (default: the last commit that has
  `arm/data/s3.py`), loaded from git history with its boto3 `Storage`: ranged GETs behind a
  1 MiB buffered reader (a larger read passes through as one GET), one request at a time.

Twice: straight to SeaweedFS on loopback (no latency, so it measures the clients' own costs),
and through a proxy that holds every request `--latency-ms` (a remote store's time to first
byte, where the number of requests and their overlap decide). Rounds alternate before/after, so
that load on the machine hits both alike; both must yield the same records. Writes
benchmarks/results/storage_seaweedfs.json: MB/s of each (best and median round), requests per
read and the ratios.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Python puts this script's folder first on sys.path; drop it, so that sibling benchmark scripts
# cannot shadow standard modules of the same name.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))
OUT = REPO / "benchmarks" / "results" / "storage_seaweedfs.json"


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=REPO, check=True, capture_output=True, text=True).stdout


def old_parquet_reader(commit: str):
    """`_read_all(src, cfg)` of the parquet source at `commit`, over that commit's arm/data/s3.py."""
    import arm.data.sources as sources

    s3 = types.ModuleType("arm.data.s3")
    s3.__file__ = f"{commit}:arm/data/s3.py"
    sys.modules["arm.data.s3"] = s3  # its dataclasses and the old parquet module look it up by name
    exec(compile(git("show", f"{commit}:arm/data/s3.py"), s3.__file__, "exec"), s3.__dict__)
    import arm.data

    arm.data.s3 = s3
    old = types.ModuleType("arm_before_parquet")
    old.__file__ = f"{commit}:arm/data/sources/parquet.py"
    register = sources.register
    sources.register = lambda kind: (lambda fn: fn)  # the current reader keeps the "parquet" name
    try:
        exec(compile(git("show", f"{commit}:arm/data/sources/parquet.py"), old.__file__, "exec"), old.__dict__)
    finally:
        sources.register = register
    return old._read_all


def write_shards(root: Path, mb: int, shards: int, row_group_rows: int, cell_kb: int) -> tuple[list[Path], int]:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = mb * 1024 // cell_kb // shards
    rng = np.random.default_rng(0)
    paths = []
    for s in range(shards):
        images = [rng.bytes(cell_kb * 1024) for _ in range(rows)]
        captions = [f"shard {s} row {i}: a caption of ordinary length for an image" for i in range(rows)]
        path = root / f"part-{s:05d}.parquet"
        pq.write_table(pa.table({"image": pa.array(images, pa.binary()), "caption": captions}), path,
                       row_group_size=row_group_rows, compression="none")
        paths.append(path)
    return paths, rows * shards


def timed(read) -> tuple[float, int, str]:
    """(seconds, records, digest of every record's image and caption) of one full read."""
    digest = hashlib.sha256()
    n = 0
    t0 = time.perf_counter()
    for rec in read():
        assert rec.error is None, rec.error
        digest.update(rec.image)
        digest.update(rec.caption.encode())
        n += 1
    return time.perf_counter() - t0, n, digest.hexdigest()


def measure(readers: dict, src, cfg, rounds: int, total: int, seen: list | None = None) -> dict:
    """Rounds alternating the readers: seconds, MB/s (best and median), requests per read."""
    runs: dict[str, list[float]] = {name: [] for name in readers}
    requests: dict[str, dict[str, int]] = {}
    results: dict[str, tuple[int, str]] = {}
    for _ in range(rounds):
        for name, reader in readers.items():
            first = len(seen) if seen is not None else 0
            seconds, n, digest = timed(lambda: reader(src, cfg))
            runs[name].append(round(seconds, 3))
            if seen is not None:
                methods = [r.method for r in seen[first:]]
                spans = [int(b) - int(a) + 1 for a, b in
                         (r.range[len("bytes="):].split("-") for r in seen[first:] if r.range)]
                requests[name] = {**{m: methods.count(m) for m in sorted(set(methods))},
                                  "ranged_gets": len(spans), "largest_range_bytes": max(spans, default=0)}
            if results.setdefault(name, (n, digest)) != (n, digest):
                raise SystemExit(f"{name}: records differ between rounds")
            print(f"  {name}: {total / 1e6 / seconds:.1f} MB/s ({seconds:.2f} s, {n} records)", flush=True)
    if len(set(results.values())) != 1:
        raise SystemExit(f"the readers disagree: {results}")
    out = {name: {"seconds": runs[name], "mb_per_s_best": round(total / 1e6 / min(runs[name]), 1),
                  "mb_per_s_median": round(total / 1e6 / statistics.median(runs[name]), 1)}
           for name in readers}
    for name in requests:
        out[name]["requests_per_read"] = requests[name]
    out["ratio_after_over_before"] = {
        "best": round(out["after"]["mb_per_s_best"] / out["before"]["mb_per_s_best"], 2),
        "median": round(out["after"]["mb_per_s_median"] / out["before"]["mb_per_s_median"], 2)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=int, default=100)
    ap.add_argument("--shards", type=int, default=2)
    ap.add_argument("--row-group-rows", type=int, default=32)
    ap.add_argument("--cell-kb", type=int, default=96)
    ap.add_argument("--batch-rows", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--latency-ms", type=float, default=20.0,
                    help="also measure through a proxy that holds each request this long (0: skip)")
    ap.add_argument("--before", default=None, help="commit of the former reader")
    args = ap.parse_args()
    before_commit = args.before or git("log", "-1", "--format=%H", "--diff-filter=D", "--", "arm/data/s3.py").strip() + "^"
    before_commit = git("rev-parse", before_commit).strip()

    import pyarrow
    import s3fs

    from arm.config import ParquetSourceConfig, StorageConfig, load_config
    from arm.data.sources.parquet import _read_all as after_reader
    from arm.io import atomic_write_json
    from s3_servers import recording_proxy, seaweedfs

    readers = {"before": old_parquet_reader(before_commit), "after": after_reader}
    settings = {}
    with tempfile.TemporaryDirectory(prefix="arm-storage-bench-") as tmp:
        tmp = Path(tmp)
        (tmp / "shards").mkdir()
        paths, rows = write_shards(tmp / "shards", args.mb, args.shards, args.row_group_rows, args.cell_kb)
        total = sum(p.stat().st_size for p in paths)
        with seaweedfs(lambda attempt: tmp / f"weed{attempt}") as server:
            os.environ.update({"AWS_ACCESS_KEY_ID": server.access_key, "AWS_SECRET_ACCESS_KEY": server.secret_key,
                               "AWS_DEFAULT_REGION": server.region})
            for var in ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
                os.environ.pop(var, None)
            bucket = server.new_bucket("bench")
            url = server.upload(tmp / "shards", bucket, "corpus")
            base = load_config(REPO / "params.yaml")
            src = ParquetSourceConfig(path=url, batch_rows=args.batch_rows)

            def cfg_for(endpoint: str):
                return base.model_copy(update={"storage": StorageConfig(endpoint_url=endpoint)})

            print("SeaweedFS on loopback:", flush=True)
            settings["loopback"] = measure(readers, src, cfg_for(server.endpoint_url), args.rounds, total)
            if args.latency_ms:
                print(f"through a proxy adding {args.latency_ms:g} ms per request:", flush=True)
                with recording_proxy(server.endpoint_url, args.latency_ms / 1000) as (proxy, seen):
                    settings[f"latency_{args.latency_ms:g}ms"] = measure(
                        readers, src, cfg_for(proxy), args.rounds, total, seen)
    report = {
        "benchmark": "parquet source over S3 (SeaweedFS on 127.0.0.1), records included",
        "data": {"bytes": total, "shards": args.shards, "rows": rows,
                 "row_group_rows": args.row_group_rows, "image_cell_bytes": args.cell_kb * 1024,
                 "batch_rows": args.batch_rows, "compression": "none", "cells": "random bytes"},
        "before": f"arm/data/sources/parquet.py + arm/data/s3.py (boto3) at {before_commit}, loaded from git",
        "after": "arm/data/sources/parquet.py (s3fs listing, pyarrow S3 client, pre_buffer per window of row groups)",
        "rounds": args.rounds,
        "settings": settings,
        "machine": {"cpus": os.cpu_count(), "load_average": [round(x, 2) for x in os.getloadavg()],
                    "python": platform.python_version(), "pyarrow": pyarrow.__version__, "s3fs": s3fs.__version__},
        "note": ("MB/s = shard bytes / seconds of a full read, MB = 1e6 bytes; best = fastest round (other "
                 "load on the machine only adds time), median alongside; both readers yield identical records"),
    }
    atomic_write_json(OUT, report)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
