"""Benchmark of the curate stage: samples/s and peak RSS at N shapes samples, against a baseline.

    .venv/bin/python benchmarks/curate.py                 # N = 10k and 100k
    .venv/bin/python benchmarks/curate.py --n 10000 --workers 2

Ours: `arm.data.curate.curate` end to end (stats in a pool of `--workers` processes, SQL
filters and dedup, image shards, DuckDB tables). Baseline, in the same run: the same per-record
stats (the same functions, no per-chunk image cache) computed row by row in plain Python in one
process and inserted row by row into DuckDB, without filters; it is capped at `--baseline-max`
records since its rate does not depend on N. Each run happens in a child process whose peak RSS
(with its pool workers) is sampled with psutil. Writes benchmarks/results/curate.json.
Target (issue 2): >= 1,500 samples/s on 2 cores, peak RSS < 2 GB and flat in N.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Python puts this script's folder first on sys.path; drop it, so that sibling benchmark scripts
# cannot shadow standard modules of the same name.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(REPO))


def shapes_config(n_scenes: int, workers: int, store: Path):
    from arm.config import load_config

    src = [{"type": "shapes", "name": "shapes", "n_scenes": n_scenes}]
    return load_config(REPO / "params.yaml", overrides=[
        "data.sources=" + json.dumps(src), f"data.workers={workers}", f"data.store={store}",
        f"data.metrics={store.parent / 'curate.json'}"])


def records_per_scene(k: int = 300) -> float:
    from arm.config import load_config
    from arm.data.sources.shapes import scene_records

    cfg = load_config(REPO / "params.yaml")
    src = cfg.data.sources[0]
    return sum(len(scene_records(src, cfg, i)) for i in range(k)) / k


# ----------------------------------------------------------------------------- children


def cpu_seconds() -> tuple[float, float]:
    """(this process, its waited-for children) user+sys CPU seconds."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime, kids.ru_utime + kids.ru_stime


def cpu_fields(n: int, before: tuple[float, float], cores: int) -> dict:
    """CPU time is what contention does not change: on `cores` free cores the run cannot take less
    than max(serial main-process time, total time / cores); that bound gives the projection."""
    main = cpu_seconds()[0] - before[0]
    workers = cpu_seconds()[1] - before[1]
    bound = max(main, (main + workers) / cores)
    return {"cpu_seconds_main": round(main, 3), "cpu_seconds_workers": round(workers, 3),
            f"projected_samples_per_s_on_{cores}_free_cores": round(n / bound, 1) if bound > 0 else None}


def child_ours(n_scenes: int, workers: int, store: Path) -> dict:
    from arm.data.curate import curate

    before = cpu_seconds()
    m = curate(shapes_config(n_scenes, workers, store), progress=False)
    return {"n": m["n_in"], "kept": m["n_kept"], "seconds": m["seconds"]["total"],
            "samples_per_s": m["samples_per_s"], "stats_seconds": m["seconds"]["stats"],
            **cpu_fields(m["n_in"], before, max(workers, 1))}


def child_baseline(n_scenes: int, limit: int, store: Path) -> dict:
    import duckdb

    from arm.data.sources import iter_source
    from arm.data.stats import STATS_COLUMNS, StatsParams, record_stats

    cfg = shapes_config(n_scenes, 1, store)
    params = StatsParams.from_config(cfg)
    store.mkdir(parents=True)
    con = duckdb.connect(str(store / "baseline.duckdb"))
    types = {"ord": "BIGINT", "width": "INTEGER", "height": "INTEGER", "aspect": "DOUBLE", "phash": "UBIGINT",
             "pixel_std": "DOUBLE", "source_width": "INTEGER", "source_height": "INTEGER", "source_phash": "UBIGINT",
             "source_pixel_std": "DOUBLE", "text_nonascii_frac": "DOUBLE"}
    cols = ", ".join(f"{c} {types.get(c, 'INTEGER' if c.startswith('text_') and c != 'text_sha' else 'VARCHAR')}"
                     for c in STATS_COLUMNS)
    con.execute(f"CREATE TABLE stats ({cols})")
    con.execute("CREATE TABLE images (sha256 VARCHAR, png BLOB, width INTEGER, height INTEGER, phash UBIGINT)")
    con.execute("CREATE TABLE rejections (ord BIGINT, source VARCHAR, ref VARCHAR, task VARCHAR, reason VARCHAR,"
                " detail VARCHAR, stage VARCHAR)")
    row_sql = f"INSERT INTO stats VALUES ({', '.join('?' * len(STATS_COLUMNS))})"
    seen: set[str] = set()
    before = cpu_seconds()
    t0 = time.perf_counter()
    n = 0
    t_stats = 0.0
    for i, rec in enumerate(iter_source(cfg.data.sources[0], cfg)):
        if i >= limit:
            break
        ts = time.perf_counter()
        row, rej, images = record_stats(rec, i, params, {})
        t_stats += time.perf_counter() - ts
        if row is not None:
            con.execute(row_sql, list(row))
            for im in images:
                if im.sha256 not in seen:
                    seen.add(im.sha256)
                    con.execute("INSERT INTO images VALUES (?, ?, ?, ?, ?)",
                                [im.sha256, im.png, im.width, im.height, im.phash])
        else:
            con.execute("INSERT INTO rejections VALUES (?, ?, ?, ?, ?, ?, ?)", list(rej))
        n += 1
    con.close()
    dt = time.perf_counter() - t0
    # The split shows what the pool and what batched writes each contribute.
    return {"n": n, "seconds": round(dt, 3), "samples_per_s": round(n / dt, 1),
            "stats_seconds": round(t_stats, 3), "stats_only_samples_per_s": round(n / t_stats, 1),
            **cpu_fields(n, before, 1)}


# ----------------------------------------------------------------------------- parent


def measure(args: list[str], poll_s: float = 0.05) -> dict:
    """Runs this script as a child; returns its JSON result plus peak RSS (child + its workers)."""
    import psutil

    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "result.json"
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, __file__, "--child", *args, "--result", str(out)], cwd=REPO)
        p = psutil.Process(proc.pid)
        peak_total = peak_main = 0
        while proc.poll() is None:
            try:
                main = p.memory_info().rss
                total = main + sum(c.memory_info().rss for c in p.children(recursive=True))
                peak_main, peak_total = max(peak_main, main), max(peak_total, total)
            except psutil.Error:
                pass
            time.sleep(poll_s)
        if proc.returncode != 0:
            raise RuntimeError(f"benchmark child {args} failed with exit code {proc.returncode}")
        res = json.loads(out.read_text())
        res["wall_seconds_with_startup"] = round(time.perf_counter() - t0, 3)
        res["peak_rss_mb_main"] = round(peak_main / 2**20, 1)
        res["peak_rss_mb_total"] = round(peak_total / 2**20, 1)
        return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, nargs="+", default=[10_000, 100_000], help="input records per run")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--baseline-max", type=int, default=10_000, help="records the baseline processes at most")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "curate.json")
    ap.add_argument("--child", choices=["ours", "baseline"])
    ap.add_argument("--n-scenes", type=int)
    ap.add_argument("--limit", type=int)
    ap.add_argument("--store", type=Path)
    ap.add_argument("--result", type=Path)
    a = ap.parse_args()

    if a.child:
        res = (child_ours(a.n_scenes, a.workers, a.store) if a.child == "ours"
               else child_baseline(a.n_scenes, a.limit, a.store))
        a.result.write_text(json.dumps(res))
        return

    from arm.io import atomic_write_json

    per_scene = records_per_scene()
    runs = []
    for n in a.n:
        n_scenes = max(1, round(n / per_scene))
        with tempfile.TemporaryDirectory(prefix="arm-bench-") as d:
            load = os.getloadavg()[0]
            ours = measure(["ours", "--n-scenes", str(n_scenes), "--workers", str(a.workers),
                            "--store", str(Path(d) / "ours" / "store")])
            base = measure(["baseline", "--n-scenes", str(n_scenes), "--limit", str(min(n, a.baseline_max)),
                            "--store", str(Path(d) / "baseline")])
        run = {"n_target": n, "n_scenes": n_scenes, "workers": a.workers, "load_avg_1m_at_start": round(load, 2),
               "ours": ours, "baseline": base,
               "speedup": round(ours["samples_per_s"] / base["samples_per_s"], 2)}
        runs.append(run)
        proj = f"projected_samples_per_s_on_{a.workers}_free_cores"
        run["projected_speedup"] = round(ours[proj] / base["projected_samples_per_s_on_1_free_cores"], 2)
        print(f"N={ours['n']}: ours {ours['samples_per_s']:.0f} samples/s (CPU-time projection on {a.workers} free"
              f" cores: {ours[proj]:.0f}), peak RSS {ours['peak_rss_mb_total']:.0f} MB"
              f" (main {ours['peak_rss_mb_main']:.0f} MB); baseline {base['samples_per_s']:.0f} samples/s on"
              f" {base['n']} records (projection"
              f" {base['projected_samples_per_s_on_1_free_cores']:.0f}), peak RSS {base['peak_rss_mb_total']:.0f} MB;"
              f" speedup x{run['speedup']} (projected x{run['projected_speedup']})"
              f" (load avg {load:.1f})", flush=True)
    result = {
        "benchmark": "curate",
        "cpus": os.cpu_count(),
        "note": "CPU shared with other jobs while measured: rates are noisy; compare within one run.",
        "target": {"samples_per_s": 1500, "peak_rss_mb": 2048},
        "runs": runs,
    }
    if len(runs) > 1:
        rss = [r["ours"]["peak_rss_mb_total"] for r in runs]
        result["rss_growth_largest_over_smallest"] = round(rss[-1] / rss[0], 2)
    atomic_write_json(a.out, result)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
