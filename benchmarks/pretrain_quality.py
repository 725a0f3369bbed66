"""Quality of the pretraining recipe on the shapes world, with a perfect visual tokenizer.

    .venv/bin/python benchmarks/pretrain_quality.py                          # tiny preset
    .venv/bin/python benchmarks/pretrain_quality.py --name nofact --set model.factorized_image_embeddings=false

Isolates the AR model (DESIGN §5): images are oracle codes (one code per grid cell, read off
the scene), so the scores are what the pretraining recipe itself reaches; the learned visual
tokenizer can only lower them. Trains with the real stage function (scenes straight from the
shapes source, `pretrain.data=shapes`), then scores the model with the eval harness
(arm.eval.run.evaluate: GenEval-style, WISE-style, edit, VQA/caption), each score beside its
reconstruction reference (ground truth through the perfect tokenizer: 1.0 by construction) and its floor.
Results accumulate by --name in benchmarks/results/pretrain_quality.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# the script's own folder goes first on sys.path, where a sibling script could shadow a
# standard module of the same name: replace it by the repo root
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path[0] = str(REPO)
else:
    sys.path.insert(0, str(REPO))

SHAPES_BENCHES = ["shapes_geneval", "shapes_wise", "shapes_edit", "understanding"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--name", default="base")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="key.path=value")
    ap.add_argument("--root", default=str(REPO / ".arm-cache" / "quality"))
    ap.add_argument("--skip-train", action="store_true", help="evaluate the model already in ROOT/NAME/model")
    ap.add_argument("--params", default=str(REPO / "params.yaml"), help="copied into ROOT/NAME first")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "pretrain_quality.json"))
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from arm.config import load_config
    from arm.curves import read_curve
    from arm.eval.prompts import build_prompt_sets
    from arm.eval.run import evaluate
    from arm.io import atomic_write_json
    from arm.model.io import load_model
    from arm.sample.pipeline import ArmPipeline
    from arm.train.perfect import PerfectVisualTokenizer
    from arm.train.pretrain import pretrain, pretrain_multiprocess

    root = Path(args.root) / args.name
    root.mkdir(parents=True, exist_ok=True)
    # a private copy: every process of the run reads the same params even if the file changes
    params = root / "params.yaml"
    if not args.skip_train:
        shutil.copyfile(args.params, params)
    o = [
        "pretrain.data=shapes", "pretrain.images=oracle",
        f"pretrain.checkpoints={root / 'ckpt'}", f"pretrain.output={root / 'model'}",
        f"pretrain.metrics={root / 'pretrain.json'}", f"pretrain.plot={root / 'curve'}",
        f"eval.metrics_dir={root}", f"eval.reports_dir={root / 'reports'}",
        "eval.benchmarks=" + json.dumps(SHAPES_BENCHES),
        *args.overrides,
    ]
    cfg = load_config(params, preset=args.preset, overrides=o)
    t0 = time.perf_counter()
    if args.skip_train:
        train = json.loads((root / "pretrain.json").read_text())
    elif cfg.pretrain.nproc > 1:
        train = pretrain_multiprocess(str(params), args.preset, o, cfg.pretrain.nproc)
    else:
        train = pretrain(cfg)
    train_wall = time.perf_counter() - t0

    prompts = build_prompt_sets(cfg, root / "prompts")
    model, tok, layout, _ = load_model(root / "model")
    visual = PerfectVisualTokenizer(cfg.world)
    pipe = ArmPipeline(model, tok, layout, visual, cfg.sampling)
    t1 = time.perf_counter()
    scores = evaluate(cfg, None, pipeline=pipe, tokenizer=visual, name=args.name, prompts_dir=prompts)
    eval_wall = time.perf_counter() - t1

    val_curve = [{k: r[k] for k in r if k == "step" or k.startswith("val_")}
                 for r in read_curve(root / "curve") if "val_generate" in r]
    entry = {
        "preset": args.preset,
        "overrides": args.overrides,
        "parameters": train["parameters"],
        "steps": train["steps"],
        "tokens_seen": train["tokens_seen"],
        "train_seconds": train["train_seconds"],
        "stage_wall_s": round(train_wall, 1),
        "tokens_per_s": train["tokens_per_s"],
        "mfu": train["mfu"],
        "val_loss": train["val_loss"],
        "val_curve": val_curve,
        "scores": scores,
        "eval_wall_s": round(eval_wall, 1),
        "load_average": os.getloadavg(),
    }
    out = Path(args.out)
    results = json.loads(out.read_text()) if out.exists() else {}
    results[args.name] = entry
    atomic_write_json(out, results)
    print(json.dumps({k: entry[k] for k in ("parameters", "tokens_seen", "train_seconds", "val_loss")}, indent=1))
    print(json.dumps(scores, indent=1)[:4000])


if __name__ == "__main__":
    main()
