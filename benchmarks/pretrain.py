"""Benchmark of pretraining throughput: tokens/s and MFU, against the CPU's measured matmul peak.

    .venv/bin/python benchmarks/pretrain.py                       # tiny preset: 1x2 vs 2x1
    .venv/bin/python benchmarks/pretrain.py --steps 60 --sizes 128x4,192x4,256x6 --layouts 2x1

For each model size the real stage function (`arm.train.pretrain.pretrain`: DeepSpeed engine,
packed rows, per-task loss) trains `--steps` optimizer steps on shapes scenes with oracle codes.
tokens/s counts row tokens (padding included) over the time spent in training steps only.
MFU = tokens/s x training FLOPs per token (6 x matmul params + attention, from the config)
over the peak FLOP/s of a large fp32 matmul measured in the same run, with the same threads.
`--layouts PxT,...` runs each size as P processes (torchrun, gloo) x T threads each; the first
layout is the baseline of the ratios (default 1x2 = one process using both cores, vs 2x1).
Writes benchmarks/results/pretrain.json. CPU numbers are noisy when other jobs share the cores.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# the script's own folder goes first on sys.path, where a sibling script could shadow a
# standard module of the same name: replace it by the repo root
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path[0] = str(REPO)
else:
    sys.path.insert(0, str(REPO))


def overrides(root: Path, steps: int, hidden: int | None, layers: int | None, threads: int) -> list[str]:
    o = [f"pretrain.threads={threads}",
        "pretrain.data=shapes", "pretrain.images=oracle",
        f"pretrain.checkpoints={root / 'ckpt'}", f"pretrain.output={root / 'model'}",
        f"pretrain.metrics={root / 'metrics.json'}", f"pretrain.plot={root / 'curve'}",
        f"pretrain.max_steps={steps}", f"pretrain.warmup_steps={min(steps, 10)}",
        f"pretrain.eval_every={steps}", "pretrain.eval_rows=4", f"pretrain.checkpoint_every={steps}",
        "data.sources=[{type: shapes, n_scenes: 600}]",
    ]
    if hidden:
        heads = max(1, hidden // 64)
        o += [f"model.hidden_size={hidden}", f"model.intermediate_size={hidden * 8 // 3 // 32 * 32}",
              f"model.num_heads={heads}", f"model.num_kv_heads={heads}"]
    if layers:
        o += [f"model.num_layers={layers}"]
    return o


def run_one(preset: str, steps: int, hidden: int | None, layers: int | None, nproc: int, threads: int) -> dict:
    import torch

    from arm.config import load_config
    from arm.train.flops import measured_peak_flops, mfu
    from arm.train.pretrain import pretrain, pretrain_multiprocess

    with tempfile.TemporaryDirectory(prefix="arm-bench-pretrain-") as tmp:
        params = Path(tmp) / "params.yaml"
        params.write_text((REPO / "params.yaml").read_text())  # one snapshot for every process
        o = overrides(Path(tmp), steps, hidden, layers, threads)
        base = load_config(params, preset=preset)
        global_rows = base.pretrain.micro_batch * base.pretrain.nproc  # the preset's global batch, kept
        o.append(f"pretrain.micro_batch={max(1, global_rows // nproc)}")
        cfg = load_config(params, preset=preset, overrides=o)
        torch.set_num_threads(threads * nproc)  # the peak of all the cores the run uses
        peak = measured_peak_flops(n=1024, seconds=2.0)
        if nproc == 1:
            m = pretrain(cfg, progress=False)
        else:
            m = pretrain_multiprocess(str(params), preset, o, nproc)
        torch.set_num_threads(threads * nproc)
        peak = max(peak, measured_peak_flops(n=1024, seconds=2.0))  # the better of before/after
    return {
        "model": f"{cfg.model.hidden_size}x{cfg.model.num_layers}",
        "parameters": m["parameters"],
        "processes": nproc,
        "threads_per_process": threads,
        "steps": m["steps"],
        "seq_len": cfg.text.seq_len,
        "micro_batch": cfg.pretrain.micro_batch,
        "tokens_per_s": m["tokens_per_s"],
        "target_tokens_per_s": round(m["target_tokens_seen"] / m["train_seconds"], 1),
        "flops_per_token": m["flops_per_token"],
        "achieved_gflops": round(m["achieved_flops"] / 1e9, 3),
        "peak_gflops_matmul": round(peak / 1e9, 3),
        "mfu": round(mfu(m["tokens_per_s"], m["flops_per_token"], peak), 4),
        "padding_waste": m["padding_waste"],
        "minutes_for_preset_steps": None,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--sizes", default="", help="comma list of HIDDENxLAYERS; empty = the preset's model")
    ap.add_argument("--layouts", default="1x2,2x1", help="comma list of PROCESSESxTHREADS; the first is the baseline")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "pretrain.json"))
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import torch

    from arm.config import load_config
    from arm.io import atomic_write_json

    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",") if s] or [(None, None)]
    load0 = os.getloadavg()
    t0 = time.perf_counter()
    layouts = [tuple(int(v) for v in s.split("x")) for s in args.layouts.split(",") if s]
    runs = []
    for hidden, layers in sizes:
        for nproc, threads in layouts:
            runs.append(run_one(args.preset, args.steps, hidden, layers, nproc, threads))
            print(json.dumps(runs[-1]), flush=True)
    cfg = load_config(REPO / "params.yaml", preset=args.preset)
    p = cfg.pretrain
    budget_tokens = p.max_steps * p.micro_batch * p.nproc * p.grad_accum * cfg.text.seq_len
    for r in runs:
        r["minutes_for_preset_steps"] = round(budget_tokens / r["tokens_per_s"] / 60, 2)
    result = {
        "benchmark": "pretrain",
        "preset": args.preset,
        "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "platform": platform.platform()},
        "load_average_start": load0,
        "load_average_end": os.getloadavg(),
        "note": "CPU shared with other jobs: load averages above the core count mean noisy, low numbers. "
                "peak = best fp32 1024^2 matmul with processes x threads torch threads, before and after each run",
        "preset_tokens": budget_tokens,
        "runs": runs,
        "wall_s": round(time.perf_counter() - t0, 1),
    }
    k = len(layouts)
    result["ratio_vs_first_layout"] = {
        f"{r['model']} {r['processes']}x{r['threads_per_process']}": round(r["tokens_per_s"] / runs[i - i % k]["tokens_per_s"], 3)
        for i, r in enumerate(runs)
    }
    atomic_write_json(args.out, result)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
