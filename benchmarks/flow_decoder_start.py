"""Where the flow decoder's sampling starts (tokenizer.flow.sample_start): realism vs exactness.

    .venv/bin/python benchmarks/flow_decoder_start.py --starts 1.0 0.6 0.4 0.25 \\
        --out benchmarks/results/flow_decoder_start.json

Samples the trained tokenizer's flow decoder (models/tokenizer/flow_decoder) from the per-token
rendering noised to each level (1 = pure noise) and scores, from the same codes, 1,000
Fashion-MNIST t10k images (FID/KID on the judge's features, PSNR/SSIM, judge accuracy) and the
shapes val images (oracle exact-scene rate). Same-run baseline: start 1.0.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokenizer", type=Path, default=REPO / "models" / "tokenizer")
    ap.add_argument("--params", default=str(REPO / "params.yaml"))
    ap.add_argument("--starts", type=float, nargs="+", default=[1.0, 0.6, 0.4, 0.25])
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "flow_decoder_start.json")
    args = ap.parse_args()

    import numpy as np
    import torch

    from arm.config import load_config
    from arm.eval.fid import FidKid, JudgeFeatures
    from arm.eval.fmnist import load_or_train, load_split
    from arm.eval.image_metrics import reconstruction_metrics
    from arm.io import atomic_write_json
    from arm.tokenizer.data import store_sets
    from arm.tokenizer.images import pixels_to_uint8, to_pixels
    from arm.tokenizer.metrics import oracle_accuracy
    from arm.tokenizer.model import VisualTokenizer

    torch.set_num_threads(1)
    cfg = load_config(args.params)
    vt = VisualTokenizer.from_pretrained(args.tokenizer)
    flow = vt.flow_decoder()
    judge = load_or_train(cfg.eval.fmnist)
    x, labels = load_split(cfg.eval.fmnist.root, "t10k", args.images)

    originals = pixels_to_uint8(to_pixels(torch.from_numpy(np.array(x)).unsqueeze(1), vt.image_size))
    codes = vt.encode(originals)
    metric = FidKid(judge, seed=0)
    metric.set_real(originals)
    val = store_sets(cfg.data.store, vt.image_size, ("val",))["val"]
    shapes = val.where(lambda i: val.scenes[i] is not None)
    shape_codes = vt.encode(shapes.pixels(range(len(shapes))))
    rows = {}
    for start in args.starts:
        t = time.perf_counter()
        garments, scenes = pixels_to_uint8(flow.sample(codes, start=start)), pixels_to_uint8(flow.sample(shape_codes, start=start))
        rows[str(start)] = {
            **metric.score(garments), **reconstruction_metrics(garments, originals),
            "accuracy": float((judge.predict(JudgeFeatures.to_pil(garments)) == labels).mean()),
            "shapes_oracle_scene_accuracy": oracle_accuracy(scenes, shapes.scenes, cfg.world)["oracle_scene_accuracy"],
            "seconds": round(time.perf_counter() - t, 2)}
        print(start, rows[str(start)], flush=True)
    base = rows.get("1.0")
    for row in rows.values():
        if base:
            row["fid_ratio_vs_start_1"] = row["fid"] / base["fid"]
    per_token = pixels_to_uint8(vt.decode(codes, decoder="per_token"))
    atomic_write_json(args.out, {
        "benchmark": "flow_decoder_start",
        "command": " ".join(shlex.quote(a) for a in [sys.executable.split("/")[-1], *sys.argv]),
        "tokenizer_flow_training": vt.flow_decoder().train_info,
        "per_token": {**metric.score(per_token), "accuracy": float((judge.predict(JudgeFeatures.to_pil(per_token)) == labels).mean())},
        "by_start": rows, "shapes_images": len(shapes), "fmnist_images": len(originals)})


if __name__ == "__main__":
    main()
