"""Sampling benchmark: the engine against transformers' `generate`, plus the engine's own ablations.

    .venv/bin/python benchmarks/sample.py --threads 2           # tiny preset shape, random init, 3x3 and 8x8 grids
    .venv/bin/python benchmarks/sample.py --model models/arm-base --grids 0

Baseline: `model.generate` on the same prompts for the same number of image tokens, sampling at
T = 1 with a LogitsProcessor that allows only image codes, and transformers' own CFG
(`guidance_scale` with the unconditional prompts as `negative_prompt_ids`). The engine runs
eagerly, compiled (StaticCache + torch.compile) and compiled with speculative Jacobi decoding (only at
batches of few rows, where it pays); `speedup` = generate seconds / engine seconds, both measured
in the same run, alternating, best of `repeats`. Ablations (KV cache vs recompute, CFG as one
doubled batch vs two passes, Jacobi vs plain) check that the engine's variants agree token for
token. Writes benchmarks/results/sample.json. CPU timings are noisy when other jobs share the cores.
"""

from __future__ import annotations

import sys
from pathlib import Path

# run as a script, this file's folder comes first on sys.path, where a sibling script could
# shadow a standard module of the same name: search the repo root instead
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

import argparse  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402

from arm.config import load_config  # noqa: E402
from arm.io import atomic_write_json  # noqa: E402
from arm.sample.engine import Engine, Request  # noqa: E402
from arm.sample.pipeline import uncond_prompt  # noqa: E402
from arm.sample.versus import versus_generate  # noqa: E402
from arm.text.formats import format_prompt  # noqa: E402
from arm.text.vocab import VocabLayout  # noqa: E402


def load_model(args, grid: int):
    """The trained model (grid 0: its own layout) or a random model of the preset's shape with a `grid` x `grid` image."""
    if args.model:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(args.model, local_files_only=True, use_safetensors=True)
        layout = VocabLayout.load(args.model)
        if grid:
            layout = VocabLayout(layout.n_text, layout.codebook_size, (grid, grid), layout.levels)
        return model.eval(), layout, f"trained: {args.model}"
    from arm.model import factorized
    from arm.model.build import build_model, count_parameters

    cfg = load_config(args.params, args.preset)
    grid = grid or cfg.tokenizer.image_size // cfg.tokenizer.patch_size
    layout = VocabLayout(cfg.text.vocab_size, _prod(cfg.tokenizer.levels), (grid, grid), tuple(cfg.tokenizer.levels))
    model = build_model(cfg.model, layout, seed=0)
    factorized.fold(model)  # what export does: a stock transformers model
    if args.init_std:
        # a random model with the default 0.02 init is nearly context-free; a wider init makes its
        # next-token choice depend on the context, a harder case for speculative decoding
        with torch.no_grad():
            for p in model.parameters():
                if p.dim() == 2:
                    p.normal_(0, args.init_std)
    desc = f"random init, {args.preset} preset shape, {count_parameters(model) / 1e6:.2f}M params"
    return model.eval(), layout, desc + (f", init std {args.init_std}" if args.init_std else "")


def _prod(xs):
    out = 1
    for x in xs:
        out *= x
    return out


def requests(layout: VocabLayout, n: int, *, cfg_scale: float, temperature: float, seed0: int = 0) -> list[Request]:
    gen = torch.Generator().manual_seed(1234)
    out = []
    for i in range(n):
        caption = torch.randint(0, layout.n_text, (int(torch.randint(4, 12, (1,), generator=gen)),), generator=gen).tolist()
        prompt = format_prompt("generate", layout, text=caption)
        out.append(Request(prompt, uncond_prompt(prompt, layout) if cfg_scale != 1 else None, cfg_scale=cfg_scale,
                           temperature=temperature, seed=seed0 + i))
    return out


# ----------------------------------------------------------------------------- the engine's own ablations


def run_once(make_engine, reqs, batch):
    """All `reqs`, `batch` at a time (batch 1 = one image after the other: the latency case)."""
    engine = make_engine()
    t0 = time.perf_counter()
    res = [r for i in range(0, len(reqs), batch) for r in engine.run(reqs[i : i + batch])]
    return time.perf_counter() - t0, [r.tokens for r in res], engine.stats


def compare(name, model, layout, reqs, batch, base_kw, new_kw, repeats):
    """Baseline and variant alternate (so drifting machine load hits both alike); the best of
    `repeats` runs is the estimate of each, as timeit does: load only ever adds time."""
    make_base = lambda: Engine(model, layout, **base_kw)  # noqa: E731
    make_new = lambda: Engine(model, layout, **new_kw)  # noqa: E731
    make_base().run(reqs[:1])  # warm-up: allocator, kernels
    make_new().run(reqs[:1])
    t_base, t_new = [], []
    for _ in range(repeats):
        tb, tok_base, s_base = run_once(make_base, reqs, batch)
        tn, tok_new, s_new = run_once(make_new, reqs, batch)
        t_base.append(tb)
        t_new.append(tn)
    n = len(reqs)
    row = {
        "batch": batch,
        "images": n,
        "baseline": base_kw,
        "variant": new_kw,
        "baseline_images_per_s": n / min(t_base),
        "variant_images_per_s": n / min(t_new),
        "speedup": min(t_base) / min(t_new),
        "speedup_median": statistics.median(t_base) / statistics.median(t_new),
        # forwards / steps are totals over all images of the run
        "baseline_forwards": s_base.forwards,
        "variant_forwards": s_new.forwards,
        "baseline_steps": s_base.steps,
        "variant_steps": s_new.steps,
        "identical_tokens": sum(a == b for a, b in zip(tok_base, tok_new)),
        "of": n,
    }
    if s_new.drafted:
        row["draft_acceptance"] = s_new.accepted_drafts / s_new.drafted
    print(f"{name:34s} b={batch:<3d} {row['baseline_images_per_s']:8.1f} -> {row['variant_images_per_s']:8.1f} img/s "
          f"x{row['speedup']:.2f} (median x{row['speedup_median']:.2f})  forwards {s_base.forwards}->{s_new.forwards}  "
          f"identical {row['identical_tokens']}/{n}", flush=True)
    return row


def distribution_check(model, layout, n: int, window: int, cfg_scale: float):
    """Chi-square homogeneity of image-code frequencies: plain decoding on seeds [0, n) vs Jacobi on
    seeds [n, 2n), so the test compares distributions, not the same noise twice."""
    from scipy.stats import chi2_contingency

    plain = Engine(model, layout).run(requests(layout, n, cfg_scale=cfg_scale, temperature=1.0, seed0=0))
    jac = Engine(model, layout, jacobi_window=window).run(requests(layout, n, cfg_scale=cfg_scale, temperature=1.0, seed0=n))
    counts = torch.zeros(2, layout.codebook_size)
    for row, res in ((0, plain), (1, jac)):
        for r in res:
            counts[row] += torch.bincount(r.codes(layout).flatten(), minlength=layout.codebook_size).float()
    used = counts.sum(0) > 0
    chi2, p, dof, _ = chi2_contingency(counts[:, used].numpy())
    print(f"distribution check (chi-square, {n} images each): p = {p:.3f}", flush=True)
    return {"test": "chi-square homogeneity of code frequencies, plain seeds [0,n) vs Jacobi seeds [n,2n)",
            "images_each": n, "chi2": float(chi2), "dof": int(dof), "p_value": float(p)}


def ablations(model, layout, args) -> dict:
    s = args.cfg_scale
    out = {"kv_cache": [], "cfg": [], "jacobi": []}
    for b in (1, 16):
        n = args.images if b > 1 else max(args.images // 2, 2)  # batch 1 runs image after image
        reqs = requests(layout, n, cfg_scale=s, temperature=1.0)
        out["kv_cache"].append(compare("KV cache vs recompute", model, layout, reqs, b,
                                       {"use_cache": False}, {"use_cache": True}, args.repeats))
        out["cfg"].append(compare("CFG doubled batch vs two passes", model, layout, reqs, b,
                                  {"cfg_mode": "separate"}, {"cfg_mode": "batch"}, args.repeats))
    for temp in (0.0, 1.0):
        for b in (1, 16):
            n = args.images if b > 1 else max(args.images // 2, 2)
            reqs = requests(layout, n, cfg_scale=s, temperature=temp)
            # drafts at every batch size (no row cap), to show where the window pays and where not
            row = compare(f"Jacobi W={args.window} vs plain (T={temp})", model, layout, reqs, b,
                          {}, {"jacobi_window": args.window, "jacobi_max_rows": 1 << 16}, args.repeats)
            row["temperature"] = temp
            row["steps_per_image"] = {"plain": row["baseline_steps"] * b / n, "jacobi": row["variant_steps"] * b / n}
            out["jacobi"].append(row)
    out["distribution"] = distribution_check(model, layout, 200, args.window, s)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="trained model dir (default: models/arm-base if present)")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--grids", type=int, nargs="+", default=[0, 8],
                    help="tokens per image side for the generate comparison (0 = the model's / preset's own)")
    ap.add_argument("--init-std", type=float, default=None, help="re-initialise the random model with this std")
    ap.add_argument("--window", type=int, default=4, help="Jacobi draft window")
    ap.add_argument("--cfg-scale", type=float, default=3.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--images", type=int, default=16, help="images per measurement")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--output", default="benchmarks/results/sample.json")
    args = ap.parse_args()
    if args.model is None and args.init_std is None and Path("models/arm-base/config.json").is_file():
        args.model = "models/arm-base"
    if args.threads:
        torch.set_num_threads(args.threads)
    # one process compiles a decode step for every (batch rows, cache length, step width) it meets
    # (2 grids x 4 row counts x 2 widths); a service meets a few, under dynamo's default limit of 8
    torch._dynamo.config.recompile_limit = 64
    torch.manual_seed(0)
    results = {"cfg_scale": args.cfg_scale, "window": args.window, "threads": torch.get_num_threads(),
               "machine": platform.processor() or platform.machine(), "repeats": args.repeats,
               "note": "CPU wall times, best of `repeats` alternating runs; noisy when other jobs share the cores; "
                       "speedup = generate seconds / engine seconds",
               "versus_generate": [], "load_average_start": os.getloadavg()[0]}
    with torch.inference_mode():
        for grid in args.grids:
            model, layout, desc = load_model(args, grid)
            results["model"] = desc
            print(f"model: {desc}; {layout.tokens_per_image} tokens per image; torch threads {torch.get_num_threads()}",
                  flush=True)
            for cfg_scale in (1.0, args.cfg_scale):
                for b in (1, 16):
                    # batch 1 runs image after image: fewer of them on long grids keeps the run short
                    n = args.images if b > 1 or layout.tokens_per_image <= 16 else max(args.images // 4, 2)
                    reqs = requests(layout, n, cfg_scale=cfg_scale, temperature=1.0)
                    row = {"tokens_per_image": layout.tokens_per_image,
                           **versus_generate(model, layout, reqs, b, args.window, args.repeats)}
                    print(f"vs generate: {layout.tokens_per_image:3d} tokens cfg {cfg_scale:g} b={b:<3d} "
                          f"generate {row['seconds']['generate']:.3f}s  "
                          + "  ".join(f"{k} x{v:.2f}" for k, v in row["speedup"].items()), flush=True)
                    results["versus_generate"].append(row)
            if grid == args.grids[0]:
                results["tokens_per_image"] = layout.tokens_per_image
                results.update(ablations(model, layout, args))
    # other jobs on the cores distort every ratio: the 1-minute load says how much to trust them
    results["load_average_end"] = os.getloadavg()[0]
    atomic_write_json(args.output, results)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
