"""Class-conditional Fashion-MNIST generations drawn by both pixel decoders, from the same codes.

    .venv/bin/python benchmarks/flow_decoder_generation.py --model models/arm-base \\
        --out benchmarks/results/flow_decoder_generation.json

The AR model samples image codes for "a photo of <class>" prompts (the eval set's fmnist_gen
prompts, `data/eval_prompts`, n samples each, fixed seeds); each code grid is rendered by the
per-token decoder and by the tokenizer's flow decoder (models/tokenizer/flow_decoder). Scored:
the Fashion-MNIST judge's accuracy ("recognised as the prompted class") and FID/KID against as
many t10k originals (the judge's features). Same-run baseline: the per-token decoder.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=REPO / "models" / "arm-base")
    ap.add_argument("--params", default=str(REPO / "params.yaml"))
    ap.add_argument("--prompts", type=Path, default=REPO / "data" / "eval_prompts" / "fmnist_gen.jsonl")
    ap.add_argument("--samples", type=int, default=10, help="samples per prompt")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "flow_decoder_generation.json")
    args = ap.parse_args()

    import numpy as np
    import torch

    from arm.config import load_config
    from arm.eval.fid import FidKid, JudgeFeatures
    from arm.eval.fmnist import load_or_train, load_split
    from arm.io import atomic_write_json
    from arm.sample.pipeline import ArmPipeline
    from arm.text.formats import format_prompt
    from arm.tokenizer.images import pixels_to_uint8, to_pixels

    torch.set_num_threads(1)
    cfg = load_config(args.params)
    pipe = ArmPipeline.from_pretrained(args.model, config=cfg.sampling)
    vt = pipe.visual
    items = [json.loads(line) for line in args.prompts.read_text().splitlines() if line.strip()]
    prompts = [format_prompt("generate", pipe.layout, text=pipe.encode_text(i["prompt"])) for i in items for _ in range(args.samples)]
    labels = np.array([i["label"] for i in items for _ in range(args.samples)])
    codes = torch.cat([pipe.sample_image_tokens(prompts[k : k + 64],
                                                seed=list(range(k, min(k + 64, len(prompts)))))
                       for k in range(0, len(prompts), 64)])
    judge = load_or_train(cfg.eval.fmnist)
    x, _ = load_split(cfg.eval.fmnist.root, "t10k", len(prompts))

    metric = FidKid(judge, kid_subset_size=min(100, len(prompts)), seed=0)
    metric.set_real(pixels_to_uint8(to_pixels(torch.from_numpy(np.array(x)).unsqueeze(1), vt.image_size)))
    grid = codes.view(len(codes), *vt.grid)
    rows = {}
    for name in ("per_token", "flow"):
        images = pixels_to_uint8(vt.decode(grid, decoder=name))
        rows[name] = {**metric.score(images), "recognised": float((judge.predict(JudgeFeatures.to_pil(images)) == labels).mean())}
        print(name, rows[name], flush=True)
    rows["flow"]["fid_ratio_vs_per_token"] = rows["flow"]["fid"] / rows["per_token"]["fid"]
    atomic_write_json(args.out, {
        "benchmark": "flow_decoder_generation",
        "command": " ".join(shlex.quote(a) for a in [sys.executable.split("/")[-1], *sys.argv]),
        "model": str(args.model), "images": len(prompts), "judge_test_accuracy": judge.test_accuracy,
        "decoders": rows, "flow_training": vt.flow_decoder().train_info})


if __name__ == "__main__":
    main()
