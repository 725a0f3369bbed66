"""Any aspect ratio on the shapes world: the tokenizer and the AR model per aspect bucket.

    .venv/bin/python benchmarks/aspect_ratio.py --model models/arm-base --params params.yaml \\
        --out benchmarks/results/aspect_ratio.json

For a run whose world draws 3x3, 3x4 and 4x3 scenes (`world.grids`) and whose tokenizer has the
matching buckets (`tokenizer.aspect`), on held-out (`novel`) scenes of each shape:

* reconstruction: the shapes oracle's exact-scene rate on the visual tokenizer's reconstructions
  at the image's own bucket; same-run baseline: the same images squashed to the square grid, as a
  tokenizer without buckets sees them (then stretched back for the oracle);
* generation: the scene's caption drawn by the AR model at the scene's aspect ratio, read by the
  independent judge (arm/eval/judge.py, as evaluation scores) and by the oracle: exact-scene rate
  (95% bootstrap interval over items), per-object colour / kind / size / cell
  (arm.eval.checks.object_attributes), the judges' agreement, and the image's shape. Square scenes
  are the same-run reference for the non-square ones.
"""

from __future__ import annotations

import argparse
import json
import random
import shlex
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=REPO / "models" / "arm-base")
    ap.add_argument("--params", default=str(REPO / "params.yaml"))
    ap.add_argument("--scenes", type=int, default=100, help="held-out scenes per shape")
    ap.add_argument("--seeds", type=int, default=2, help="samples per generation prompt")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "aspect_ratio.json")
    ap.add_argument("--recipe", default="", help="how the model was trained (recorded in the JSON)")
    args = ap.parse_args()

    import numpy as np
    import torch

    from arm.config import load_config, shapes_of
    from arm.data import holdout, shapes
    from arm.data.images import resize
    from arm.data.oracle import parse
    from arm.eval.checks import object_attributes
    from arm.eval.intervals import bootstrap_interval
    from arm.eval.judge import load_or_train
    from arm.eval.scoring import summarize_attributes
    from arm.io import atomic_write_json
    from arm.sample.images import to_pil
    from arm.sample.pipeline import ArmPipeline

    torch.set_num_threads(2)
    cfg = load_config(args.params)
    world = cfg.world
    pipe = ArmPipeline.from_pretrained(args.model, config=cfg.sampling)
    vt = pipe.visual
    judge = load_or_train(cfg.eval.judge, world)
    rows = {}
    for grid in shapes_of(world):
        rng = random.Random(f"aspect:{grid}")
        scenes = [holdout.heldout_scene(rng, world, "novel", lambda r: shapes.random_scene(r, world, grid=grid))
                  for _ in range(args.scenes)]
        images = [shapes.render(s, world) for s in scenes]
        name = f"{grid[0]}x{grid[1]}"

        own = pipe.decode_codes(vt.encode_each(images))
        side = vt.grid[0] * vt.patch_size
        squashed = [resize(to_pil(p), im.size) for p, im in
                    zip(vt.decode(vt.encode([resize(im, (side, side)) for im in images], grid=vt.grid)), images)]
        exact = lambda got: [float(parse(g, world) == s) for g, s in zip(got, scenes)]  # noqa: E731

        t0 = time.perf_counter()
        prompts = [shapes.caption(s, world.grid) for s in scenes]
        ratio = f"{grid[1]}:{grid[0]}"  # width:height
        drawn = [im for k in range(args.seeds) for im in pipe.generate(prompts, aspect_ratio=ratio, seed=1000 * k)]
        seconds = time.perf_counter() - t0
        targets = scenes * args.seeds

        def scored(read: list) -> dict:
            hits = [float(p == s) for p, s in zip(read, targets)]
            return {"exact_scene": float(np.mean(hits)), "exact_scene_interval": bootstrap_interval(hits),
                    **summarize_attributes([object_attributes(s.objects, p) for s, p in zip(targets, read)])}

        by_judge, by_oracle = judge.read(drawn), [parse(im, world) for im in drawn]
        rows[name] = {
            "scenes": len(scenes),
            "reconstruction_exact_scene": {"own_bucket": float(np.mean(exact(own))),
                                           "squashed_to_square": float(np.mean(exact(squashed)))},
            "generation": {
                "samples": len(drawn),
                "image_size": sorted({im.size for im in drawn}),
                "judge": scored(by_judge),
                "oracle": scored(by_oracle),
                "judges_agree": float(np.mean([a == b for a, b in zip(by_judge, by_oracle)])),
                "seconds_per_image": round(seconds / len(drawn), 4),
            },
        }
        print(name, json.dumps(rows[name]), flush=True)

    square = rows[f"{world.grid}x{world.grid}"]["generation"]["judge"]["exact_scene"]
    for r in rows.values():
        rec = r["reconstruction_exact_scene"]
        rec["ratio_own_vs_squashed"] = rec["own_bucket"] / rec["squashed_to_square"] if rec["squashed_to_square"] else None
        r["generation"]["judge"]["ratio_vs_square"] = r["generation"]["judge"]["exact_scene"] / square if square else None
    atomic_write_json(args.out, {
        "what": __doc__.splitlines()[0],
        "command": " ".join(shlex.quote(a) for a in [".venv/bin/python", "benchmarks/aspect_ratio.py", *sys.argv[1:]]),
        "model": str(args.model), "recipe": args.recipe, "grids": [list(g) for g in vt.grids], "world_shapes": [list(g) for g in shapes_of(world)],
        "by_shape": rows,
    })
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
