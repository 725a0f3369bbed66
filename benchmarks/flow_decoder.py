"""Rectified-flow pixel decoder vs the tokenizer's per-token decoder, on Fashion-MNIST.

    .venv/bin/python benchmarks/flow_decoder.py --tokenizer models/tokenizer \\
        --out benchmarks/results/flow_decoder.json --grid benchmarks/results/flow_decoder.png

Trains the flow decoder (arm/tokenizer/flow_decoder.py) on the frozen tokenizer's codes of
Fashion-MNIST train images, then on N t10k images (as the tokenizer sees them: 48 px RGB)
compares the two decoders from the same codes: reconstruction FID and KID on the Fashion-MNIST
judge's features (arm/eval/fid.py), PSNR/SSIM (arm/eval/image_metrics.py), the judge's
accuracy on the reconstructions vs on the originals, training and sampling time. Same-run
baseline: flow FID / per-token FID. A "reference" row scores N other t10k originals against
the N originals: the FID/KID a perfect decoder would get at this N (the estimator's floor).
Variants: `residual` conditions the flow on the per-token decoder's pixels as well as the token
features; `features` on the token features only.
Issue 17 targets: flow FID <= 0.5 x per-token FID, accuracy on flow reconstructions within 0.05
of the originals', decoder training <= 10 min on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

VARIANTS = {"residual": {"condition_on_decoder": True}, "features": {"condition_on_decoder": False}}


def grid_png(path: Path, columns: dict, rows: list[int]) -> None:
    """One row per example, one column per decoder (uint8 [N, 3, S, S] each): the eval report's grid."""
    from PIL import Image

    from arm.eval.report import grid_image
    from arm.eval.run import Grid

    grid = Grid("decoders", list(columns))
    for i in rows:
        grid.rows.append([(Image.fromarray(c[i].permute(1, 2, 0).numpy()), None) for c in columns.values()])
    path.parent.mkdir(parents=True, exist_ok=True)
    grid_image(grid).save(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokenizer", type=Path, default=REPO / "models" / "tokenizer")
    ap.add_argument("--fmnist-root", default="/usr/share/datasets/fashion-mnist")
    ap.add_argument("--train-images", type=int, default=20000, help="Fashion-MNIST train images for the flow")
    ap.add_argument("--test-images", type=int, default=1000, help="t10k images scored")
    ap.add_argument("--variants", nargs="+", choices=sorted(VARIANTS), default=["residual"])
    ap.add_argument("--flow", default="{}", help="FlowDecoderConfig fields as JSON (e.g. '{\"max_steps\": 3000}')")
    ap.add_argument("--sample-steps", type=int, nargs="+", default=[10], help="Euler steps scored (the first is the headline)")
    ap.add_argument("--probe-images", type=int, default=5000,
                    help="train images for the code probe (0: skip): the class information the codes carry")
    ap.add_argument("--kid-subset-size", type=int, default=100)
    ap.add_argument("--kid-subsets", type=int, default=100)
    ap.add_argument("--judge-cache", default=".arm-cache/eval")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0, help="sampling seed")
    ap.add_argument("--save", type=Path, default=None, help="save each trained flow decoder under DIR/<variant>")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "flow_decoder.json")
    ap.add_argument("--grid", type=Path, default=REPO / "benchmarks" / "results" / "flow_decoder.png")
    args = ap.parse_args()

    import numpy as np
    import torch

    from arm.eval.config import FmnistEvalConfig
    from arm.eval.fid import FidKid, JudgeFeatures
    from arm.eval.fmnist import load_or_train, load_split
    from arm.eval.image_metrics import reconstruction_metrics
    from arm.io import atomic_write_json
    from arm.tokenizer.config import FlowDecoderConfig
    from arm.tokenizer.flow_decoder import encode_images, tokenizer_fingerprint, train_flow_decoder
    from arm.tokenizer.images import pixels_to_uint8
    from arm.tokenizer.model import VisualTokenizer

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    tok = VisualTokenizer.from_pretrained(args.tokenizer)
    judge_cfg = FmnistEvalConfig(root=args.fmnist_root, cache_dir=args.judge_cache)
    judge = load_or_train(judge_cfg)
    print(f"judge: {judge_cfg.classifier}, t10k accuracy {judge.test_accuracy:.3f} ({time.perf_counter() - t0:.0f} s)", flush=True)

    def as_tensor(x):  # IDX uint8 [N, 28, 28] -> [N, 1, 28, 28]: the tokenizer resizes it as it does any grey image
        return torch.from_numpy(np.array(x)).unsqueeze(1)  # a writable copy (the IDX reader returns a read-only view)

    xall, yall = load_split(args.fmnist_root, "train", max(args.train_images, args.probe_images))
    xtr = xall[: args.train_images]
    xte, yte = load_split(args.fmnist_root, "t10k", 2 * args.test_images)
    n = args.test_images
    codes, originals = encode_images(tok, as_tensor(xte[:n]))
    _, others = encode_images(tok, as_tensor(xte[n:]))
    labels = yte[:n]

    metric = FidKid(judge, kid_subset_size=args.kid_subset_size, kid_subsets=args.kid_subsets, seed=args.seed)
    metric.set_real(originals)

    def accuracy(u8) -> float:
        return float((judge.predict(JudgeFeatures.to_pil(u8)) == labels).mean())

    def score(u8) -> dict:
        return {**metric.score(u8), **reconstruction_metrics(u8, originals), "accuracy": accuracy(u8)}

    results: dict[str, dict] = {
        "originals": {"accuracy": accuracy(originals), "accuracy_28px": float((judge.predict(xte[:n]) == labels).mean())},
        "reference": metric.score(others),
    }
    if args.probe_images:
        # A decoder sees only the codes: a logistic-regression probe on them (one-hot per position)
        # shows how much class information any decoder could pass on to the judge.
        from sklearn.linear_model import LogisticRegression

        from arm.tokenizer.metrics import one_hot_codes

        probe_codes, _ = encode_images(tok, as_tensor(xall[: args.probe_images]))
        flat = lambda c: one_hot_codes(c.reshape(len(c), -1), tok.codebook_size)  # noqa: E731
        probe = LogisticRegression(max_iter=2000, random_state=0).fit(flat(probe_codes), yall[: args.probe_images])
        results["originals"]["code_probe_accuracy"] = float((probe.predict(flat(codes)) == labels).mean())
    t = time.perf_counter()
    per_token = pixels_to_uint8(tok.decode(codes))
    results["per_token"] = {**score(per_token), "sample_seconds_per_image": (time.perf_counter() - t) / n}
    print("per_token", json.dumps(results["per_token"]), flush=True)
    columns = {"original": originals, "per-token": per_token}

    overrides = json.loads(args.flow)
    for variant in args.variants:
        cfg = FlowDecoderConfig(**{**overrides, **VARIANTS[variant]})
        model = train_flow_decoder(tok, as_tensor(xtr), cfg, log=lambda r: print(
            f"  {variant} step {r['step']} loss {r['loss']:.4f} ({r['seconds']:.0f} s)", flush=True))
        if args.save:
            model.save(args.save / variant)
        row = {"config": cfg.model_dump(mode="json"), "training": model.train_info,
               "loss_curve": [[r["step"], round(r["loss"], 5)] for r in model.history], "by_steps": {}}
        for steps in args.sample_steps:
            t = time.perf_counter()
            flow = pixels_to_uint8(model.sample(codes, steps=steps, generator=torch.Generator().manual_seed(args.seed)))
            seconds = (time.perf_counter() - t) / n
            row["by_steps"][str(steps)] = {**score(flow), "sample_seconds_per_image": seconds}
            print(f"{variant} {steps} steps", json.dumps(row["by_steps"][str(steps)]), flush=True)
            if steps == args.sample_steps[0]:
                columns[f"flow-{variant}"] = flow
        head = row["by_steps"][str(args.sample_steps[0])]
        row.update({k: head[k] for k in ("fid", "kid_mean", "kid_std", "psnr", "ssim", "accuracy", "sample_seconds_per_image")})
        row["fid_ratio_vs_per_token"] = head["fid"] / results["per_token"]["fid"]
        row["targets"] = {
            "fid_at_most_half_of_per_token": row["fid_ratio_vs_per_token"] <= 0.5,
            "accuracy_within_0.05_of_originals": results["originals"]["accuracy"] - head["accuracy"] <= 0.05,
            "training_within_10_min": model.train_info["total_seconds"] <= 600,
        }
        results[f"flow_{variant}"] = row

    # one example per class, first occurrences, then the next ones
    rows = [int(np.flatnonzero(labels == c)[0]) for c in range(10) if (labels == c).any()]
    grid_png(args.grid, columns, rows)
    report = {
        "benchmark": "flow_decoder",
        "command": " ".join(shlex.quote(a) for a in [sys.executable.split("/")[-1], *sys.argv]),
        "settings": {**{k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                     "tokenizer_fingerprint": tokenizer_fingerprint(tok), "tokenizer_grid": list(tok.grid),
                     "tokenizer_levels": tok.levels, "image_size": tok.image_size,
                     "judge": judge_cfg.model_dump(), "judge_test_accuracy": judge.test_accuracy,
                     "features": f"judge penultimate activations ({JudgeFeatures(judge).num_features}-d)",
                     "torch_threads": torch.get_num_threads()},
        "results": results,
        "wall_seconds": round(time.perf_counter() - t0, 1),
    }
    atomic_write_json(args.out, report)
    print(f"wrote {args.out} and {args.grid} ({report['wall_seconds']} s)")


if __name__ == "__main__":
    main()
