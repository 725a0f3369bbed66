"""Benchmark of image tokenization: images/s at the best batch size vs batch size 1, peak RSS.

    .venv/bin/python benchmarks/tokenize_images.py                       # models/tokenizer if trained, else tiny init
    .venv/bin/python benchmarks/tokenize_images.py --model DIR --n 2048 --batch-sizes 1 16 64 256 1024

Ours: `VisualTokenizer.encode` on batches of shapes-world images (PIL in, codes out, as the
tokenize stage calls it). Baseline, in the same run: batch size 1, which is what encoding
images one at a time (a naive loop, or a request per image) costs. Throughput does not depend
on the weights, so an untrained tiny tokenizer gives the same numbers as a trained one.
Reports wall-clock and CPU-time rates: on a shared machine the CPU-time rate is the stable one.
Writes benchmarks/results/tokenize.json.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def load_tokenizer(model_dir: Path | None, cfg):
    import torch

    from arm.tokenizer.model import VisualTokenizer
    from arm.tokenizer.vocab import SPECIALS

    if model_dir is not None and (model_dir / "model.safetensors").is_file():
        return VisualTokenizer.from_pretrained(model_dir), str(model_dir)
    torch.manual_seed(0)
    tok = VisualTokenizer.build(cfg.tokenizer, caption_vocab=SPECIALS + ["a"], text_dim=384, distill_dim=112)
    return tok.eval(), "untrained tiny config"


def measure(tok, images, batch: int, min_seconds: float) -> dict:
    """Encodes `images` in batches (repeating the pass until `min_seconds`); wall and CPU rates."""
    n = 0
    t0, c0 = time.perf_counter(), time.process_time()
    while True:
        for i in range(0, len(images), batch):
            tok.encode(images[i : i + batch])
            n += len(images[i : i + batch])
        if time.perf_counter() - t0 >= min_seconds:
            break
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"batch_size": batch, "images": n, "wall_s": round(wall, 3), "cpu_s": round(cpu, 3),
            "images_per_s": round(n / wall, 1), "images_per_cpu_s": round(n / cpu, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=REPO / "models" / "tokenizer")
    ap.add_argument("--n", type=int, default=1024, help="images per pass")
    ap.add_argument("--n-single", type=int, default=128, help="images for the batch-size-1 baseline")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16, 64, 256, 1024])
    ap.add_argument("--min-seconds", type=float, default=3.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "tokenize.json")
    args = ap.parse_args()

    import psutil
    import torch

    from arm.config import load_config
    from arm.data import shapes
    from arm.io import atomic_write_json

    torch.set_num_threads(args.threads)
    cfg = load_config(REPO / "params.yaml")
    tok, source = load_tokenizer(args.model, cfg)
    rng = random.Random(0)
    images = [shapes.render(shapes.random_scene(rng, cfg.world), cfg.world) for _ in range(args.n)]
    tok.encode(images[:8])  # warm-up: lazy inits and allocator

    rss_start = psutil.Process().memory_info().rss
    runs = []
    for b in args.batch_sizes:
        subset = images[: args.n_single] if b == 1 else images
        r = measure(tok, subset, b, args.min_seconds)
        runs.append(r)
        print(f"batch {b:5d}: {r['images_per_s']:8.1f} images/s wall, {r['images_per_cpu_s']:8.1f} images/CPU-s",
              flush=True)
    base = next(r for r in runs if r["batch_size"] == 1) if 1 in args.batch_sizes else runs[0]
    best = max(runs, key=lambda r: r["images_per_s"])
    best_cpu = max(runs, key=lambda r: r["images_per_cpu_s"])
    result = {
        "tokenizer": source,
        "grid": list(tok.grid),
        "codebook_size": tok.codebook_size,
        "image_size": tok.image_size,
        "threads": args.threads,
        "runs": runs,
        "baseline_batch_1_images_per_s": base["images_per_s"],
        "best_batch_size": best["batch_size"],
        "best_images_per_s": best["images_per_s"],
        "speedup_vs_batch_1": round(best["images_per_s"] / base["images_per_s"], 2),
        "best_batch_size_cpu": best_cpu["batch_size"],
        "speedup_vs_batch_1_cpu_time": round(best_cpu["images_per_cpu_s"] / base["images_per_cpu_s"], 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "rss_at_start_mb": round(rss_start / 2**20, 1),
        "load_average": list(psutil.getloadavg()),
        "note": "CPU shared with other jobs: wall-clock rates are noisy; CPU-time rates are stable",
    }
    atomic_write_json(args.out, result)
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=2))


if __name__ == "__main__":
    main()
