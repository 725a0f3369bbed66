"""Load test of the BentoML service: throughput and latency with adaptive batching on vs off.

    .venv/bin/python benchmarks/serve.py [--model-dir models/arm-base] [--preset tiny]

Packages the model into a temporary BentoML home, serves it twice with `bentoml serve` on
127.0.0.1 (serve.batching.enabled true / false, both up at once), and drives /generate and
/describe with a bounded asyncio client at 1, 8 and 32 concurrent clients, alternating between
the two servers level by level. Without a trained model it uses a
randomly initialised model of the preset's architecture: the cost per token is the same.
Writes benchmarks/results/serve.json with the ratio batching-on / batching-off per level.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Before any other import: the repo, not benchmarks/, goes first on the path, so sibling
# scripts cannot shadow stdlib modules that asyncio/inspect import.
REPO = Path(__file__).resolve().parents[1]
sys.path[:1] = [str(REPO)]

import argparse  # noqa: E402
import asyncio  # noqa: E402
import base64  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import random  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import httpx  # noqa: E402

from arm.config import ArmConfig, load_config  # noqa: E402
from arm.io import atomic_write_json  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in [0, 100])."""
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, int(round(q / 100 * len(ordered) + 0.5)) - 1))
    return ordered[k]


def payloads(cfg: ArmConfig, n: int, seed: int = 0) -> dict[str, list[dict]]:
    from arm.data import shapes

    rng = random.Random(seed)
    gen, desc = [], []
    for i in range(n):
        scene = shapes.random_scene(rng, cfg.world)
        gen.append({"prompt": shapes.caption(scene, cfg.world.grid), "seed": i})
        buf = io.BytesIO()
        shapes.render(scene, cfg.world).save(buf, format="PNG")
        question, _ = shapes.vqa_pair(rng, scene, cfg.world)
        desc.append({"image": base64.b64encode(buf.getvalue()).decode(), "question": question, "seed": i})
    return {"generate": gen, "describe": desc}


async def drive(url: str, route: str, bodies: list[dict], concurrency: int, timeout_s: float) -> dict:
    """`concurrency` clients, each sending its next request when the previous one is answered."""
    latencies: list[float] = []
    errors: dict[str, int] = {}
    queue = list(bodies)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=timeout_s, limits=limits) as client:

        async def worker() -> None:
            while queue:
                body = queue.pop()
                t0 = time.perf_counter()
                try:
                    r = await client.post(route, json=body)
                    ok = r.status_code == 200
                    key = str(r.status_code)
                except httpx.HTTPError as e:
                    ok, key = False, type(e).__name__
                if ok:
                    latencies.append(time.perf_counter() - t0)
                else:
                    errors[key] = errors.get(key, 0) + 1

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    n = len(latencies)
    return {
        "requests": len(bodies),
        "ok": n,
        "errors": errors,
        "wall_s": round(wall, 3),
        "throughput_rps": round(n / wall, 3) if wall > 0 else 0.0,
        "p50_ms": round(1000 * percentile(latencies, 50), 1) if n else None,
        "p99_ms": round(1000 * percentile(latencies, 99), 1) if n else None,
        "mean_ms": round(1000 * statistics.fmean(latencies), 1) if n else None,
    }


def pipeline_only(cfg: ArmConfig, model_dir: Path, sizes: list[int], torch_threads: int | None) -> dict:
    """Items/s of ArmPipeline.run alone at each batch size: the ceiling the service's batching can reach."""
    import torch

    from arm.sample.pipeline import Task
    from arm.serve.runner import load_pipeline

    if torch_threads:
        torch.set_num_threads(torch_threads)
    pipe = load_pipeline(model_dir, cfg.sampling)
    out = {}
    for b in sizes:
        tasks = [Task("generate", "a large red circle", seed=i) for i in range(b)]
        pipe.run(tasks)
        best = min(_timed(pipe.run, tasks) for _ in range(3))
        out[str(b)] = {"batch_ms": round(1000 * best, 1), "items_per_s": round(b / best, 2)}
    return out


def _timed(fn, *args) -> float:
    t0 = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t0


def run_both(cfg: ArmConfig, model_tag: str, levels: list[int], per_client: int, min_requests: int, work: Path,
             preset: str, torch_threads: int | None) -> dict:
    """Both servers (batching on, off) up at once; each level is measured on one, then at once on
    the other, so drift in the machine's load falls on both sides of a ratio alike."""
    from contextlib import ExitStack

    from arm.serve.launch import ServerProcess, serve_env

    most = max(max(levels) * per_client, min_requests)
    data = payloads(cfg, most + 16)
    timeout = cfg.serve.traffic.timeout_s
    out: dict[str, dict] = {"on": {}, "off": {}}
    with ExitStack() as stack:
        servers = {}
        for mode in ("on", "off"):
            overrides = [f"serve.batching.enabled={'true' if mode == 'on' else 'false'}"]
            if torch_threads:
                overrides.append(f"serve.torch_threads={torch_threads}")
            env = serve_env(model_tag=model_tag, preset=preset, overrides=overrides)
            env.pop("ARM_SERVE_TOKEN", None)  # measure the model path, not auth
            servers[mode] = stack.enter_context(
                ServerProcess(REPO, env, log_path=work / f"server-batching-{mode}.log", ready_timeout_s=300))
        # warm-up: lazy init, and BentoML's batching optimizer fits its latency model on the first
        # calls. One client only: the optimizer's learned wait is an average of past queueing waits,
        # so a burst here would inflate the single-client latency measured next.
        for mode, srv in servers.items():
            for route in ("generate", "describe"):
                asyncio.run(drive(srv.url, f"/{route}", data[route][-16:], 1, timeout))
        for route in ("generate", "describe"):
            for c in sorted(levels):
                n = max(c * per_client, min_requests)
                for mode, srv in servers.items():
                    res = asyncio.run(drive(srv.url, f"/{route}", data[route][:n], c, timeout))
                    out[mode].setdefault(route, {})[str(c)] = res
                    print(f"batching {mode:3s} {route:8s} c={c:2d}: {res['throughput_rps']:7.2f} req/s "
                          f"p50 {res['p50_ms']} ms p99 {res['p99_ms']} ms errors {res['errors']}", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", type=Path, default=None, help="exported model dir (default: sampling.model_dirs, else random)")
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--levels", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--per-client", type=int, default=4, help="requests per client at each level")
    ap.add_argument("--min-requests", type=int, default=24)
    ap.add_argument("--torch-threads", type=int, default=1,
                    help="model process intra-op threads (1 avoids OpenMP oversubscription on a shared 2-core box; 0 = torch default)")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "serve.json")
    args = ap.parse_args()

    cfg = load_config(REPO / "params.yaml", preset=args.preset)
    work = Path(tempfile.mkdtemp(prefix="arm-serve-bench-"))
    os.environ["BENTOML_HOME"] = str(work / "bentoml")  # never touches the user's model store
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")
    from arm.serve.package import package
    from arm.serve.smoke import build_random_model

    model_dir = args.model_dir
    if model_dir is None:
        model_dir = next((REPO / d for d in cfg.sampling.model_dirs if (REPO / d).is_dir()), None)
    random_init = model_dir is None
    if random_init:
        model_dir = build_random_model(cfg, work / "random")
    tag = package(cfg, model_dir, repo=REPO, build=False)["model_tag"]
    print(f"model {model_dir} -> {tag} ({'random init' if random_init else 'trained'}); logs in {work}", flush=True)

    ceiling = pipeline_only(cfg, model_dir, sorted({1, *args.levels}), args.torch_threads or None)
    print(f"pipeline alone (generate): {ceiling}", flush=True)
    results = run_both(cfg, tag, args.levels, args.per_client, args.min_requests, work, args.preset,
                       args.torch_threads or None)
    ratios = {
        route: {
            c: {
                "throughput_on_over_off": round(results["on"][route][c]["throughput_rps"]
                                                / max(results["off"][route][c]["throughput_rps"], 1e-9), 2),
                "p99_over_p50_on": round(results["on"][route][c]["p99_ms"] / results["on"][route][c]["p50_ms"], 2)
                if results["on"][route][c]["p50_ms"] else None,
            }
            for c in results["on"][route]
        }
        for route in ("generate", "describe")
    }
    report = {
        "benchmark": "serve",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "model_dir": str(model_dir),
        "random_init": random_init,
        "preset": args.preset,
        "levels": args.levels,
        "batching": cfg.serve.batching.model_dump(),
        "torch_threads": args.torch_threads or None,
        "host": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "note": "CPU numbers on a machine shared with other jobs are noisy; compare ratios from the same run",
        "pipeline_only_generate": ceiling,
        "results": results,
        "ratios": ratios,
        "targets": {"throughput_on_over_off_at_32": ">= 3", "p99_over_p50_at_8": "< 2"},
    }
    atomic_write_json(args.out, report)
    print(json.dumps(ratios, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
