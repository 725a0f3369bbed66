"""Benchmark of the curate flow's executors: Prefect tasks on a local Dask cluster vs the process pool.

    .venv/bin/python benchmarks/curate_dask.py                      # tiny preset, 2 workers each
    .venv/bin/python benchmarks/curate_dask.py --preset micro --workers 2

Both runs go through flows/curate.py (`curate_flow`), same preset, same worker count, each in a
child process: baseline `data.executor=process` (a spawn pool of `--workers`), candidate
`data.executor=dask` (a LocalCluster of `--workers` single-thread processes, one Prefect task per
chunk). samples/s is the stage's own figure (executor start-up included, Prefect API start-up
not); wall_seconds_with_startup adds interpreter, Prefect and cluster start-up. Peak RSS sums the
child and all its descendants (pool or Dask workers). The two stores are compared table by table.
Writes benchmarks/results/curate_dask.json. On a shared CPU the numbers are noisy: read the ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# This script's folder first on sys.path would let sibling scripts shadow standard modules
# of the same name.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(REPO))


def child(executor: str, preset: str, workers: int, store: Path, result: Path) -> None:
    from flows.curate import curate_flow

    m = curate_flow(params=str(REPO / "params.yaml"), preset=preset, overrides=[
        f"data.store={store}", f"data.metrics={store.parent / (store.name + '.json')}",
        f"data.executor={executor}", f"data.workers={workers}", f"data.dask_workers={workers}"])
    result.write_text(json.dumps({"n": m["n_in"], "kept": m["n_kept"], "samples_per_s": m["samples_per_s"],
                                  "seconds": m["seconds"], "executor": m["executor"]}))


def measure(executor: str, preset: str, workers: int, store: Path, poll_s: float = 0.1) -> dict:
    import psutil

    out = store.parent / f"{executor}.result.json"
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, __file__, "--child", executor, "--preset", preset,
                             "--workers", str(workers), "--store", str(store), "--result", str(out)], cwd=REPO)
    p = psutil.Process(proc.pid)
    peak = 0
    while proc.poll() is None:
        try:
            peak = max(peak, p.memory_info().rss + sum(c.memory_info().rss for c in p.children(recursive=True)))
        except psutil.Error:
            pass
        time.sleep(poll_s)
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark child ({executor}) failed with exit code {proc.returncode}")
    res = json.loads(out.read_text())
    res["wall_seconds_with_startup"] = round(time.perf_counter() - t0, 3)
    res["peak_rss_mb_total"] = round(peak / 2**20, 1)
    return res


def same_tables(a: Path, b: Path) -> dict[str, bool]:
    import duckdb

    def rows(store: Path, table: str) -> list[tuple]:
        with duckdb.connect(str(store / "store.duckdb"), read_only=True) as con:
            return con.execute(f"SELECT * FROM {table} ORDER BY ord").fetchall()

    return {t: rows(a, t) == rows(b, t) for t in ("samples", "rejections")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "curate_dask.json")
    ap.add_argument("--child", choices=["process", "dask"])
    ap.add_argument("--store", type=Path)
    ap.add_argument("--result", type=Path)
    a = ap.parse_args()
    if a.child:
        child(a.child, a.preset, a.workers, a.store, a.result)
        return

    from arm.io import atomic_write_json

    with tempfile.TemporaryDirectory(prefix="arm-bench-dask-") as d:
        os.environ.setdefault("PREFECT_HOME", str(Path(d) / "prefect"))  # a throwaway Prefect database
        os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
        os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")  # busy CPUs start slowly
        load = os.getloadavg()[0]
        base = measure("process", a.preset, a.workers, Path(d) / "process")
        cand = measure("dask", a.preset, a.workers, Path(d) / "dask")
        same = same_tables(Path(d) / "process", Path(d) / "dask")
    res = {"preset": a.preset, "workers": a.workers, "load_avg_1m_at_start": round(load, 2),
           "cpu_count": os.cpu_count(), "process": base, "dask": cand, "identical_tables": same,
           "ratio_dask_over_process_samples_per_s": round(cand["samples_per_s"] / base["samples_per_s"], 3)}
    atomic_write_json(a.out, res)
    print(f"{a.preset}: {base['n']} records; process pool {base['samples_per_s']:.0f} samples/s, "
          f"dask {cand['samples_per_s']:.0f} samples/s (ratio {res['ratio_dask_over_process_samples_per_s']}); "
          f"peak RSS {base['peak_rss_mb_total']:.0f} / {cand['peak_rss_mb_total']:.0f} MB; identical tables {same}; "
          f"load {load:.1f} on {os.cpu_count()} CPUs (shared: noisy) -> {a.out}")


if __name__ == "__main__":
    main()
