"""Per-attribute accuracy of AR models on novel prompts: which attribute of a stated object a
generated image gets right, and which attribute questions about a novel image the model answers.

Novel prompts are full captions of `novel` held-out scenes (world.holdout: never in training).
Generated images are read by the shapes oracle (on renders of the learned tokenizer's decoder it
agrees with the learned judge on > 0.99 of scenes, metrics/eval_*.json `judge_agreement`).
Intervals are 95% bootstrap intervals over prompts (objects of one prompt move together), from
the evaluation's own `summary_intervals` over its `summarize_attributes`.

`attention_entropy` and `collapsed_heads` (arm/eval/attention.py, on 64 of the prompts,
teacher-forced on their codes): how the image tokens read the caption, 0 = every head reads one
word. A head stuck on one word carries one attribute of one object.

    python benchmarks/attribute_study.py --out benchmarks/results/attributes_tiny.json \\
        base-s0=models/arm-base oracle-s0=/tmp/oracle-s0 ...
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import numpy as np

from arm.config import load_config
from arm.data import holdout, shapes
from arm.data.shapes import position_name
from arm.data.oracle import parse
from arm.eval import attention
from arm.eval.answers import exact_match
from arm.eval.checks import object_attributes
from arm.eval.intervals import bootstrap_interval, summary_intervals
from arm.eval.scoring import summarize_attributes
from arm.io import atomic_write_json
from arm.sample.pipeline import ArmPipeline

QUESTIONS = ("color_of", "shape_at", "size_of")


def novel_scenes(world, n: int, seed: int) -> list[shapes.Scene]:
    return [holdout.heldout_scene(random.Random(f"attributes:{seed}:{i}"), world, "novel",
                                  lambda r: shapes.random_scene(r, world)) for i in range(n)]


def training_scenes(cfg, n: int) -> list[shapes.Scene]:
    """The first shapes source's own scenes (what pretraining saw, val/test splits aside): the
    same measurement on them separates memory from a rule learned."""
    src = next(s for s in cfg.data.sources if s.type == "shapes")
    return [holdout.training_scene(random.Random(f"{src.seed}:{i}"), cfg.world) for i in range(n)]


def questions_of(scene: shapes.Scene, rng: random.Random, world) -> list[tuple[str, str, str]]:
    """(type, question, answer): the colour, kind and size of one object each, asked as the
    training questions ask them (colour and size only of a kind that occurs once)."""
    out = []
    o = rng.choice(scene.objects)
    out.append(("shape_at", f"what shape is in the {position_name(o.row, o.col, world.grid)}?", o.kind))
    kinds = [x.kind for x in scene.objects]
    unique = [x for x in scene.objects if kinds.count(x.kind) == 1]
    if unique:
        u = rng.choice(unique)
        out.append(("color_of", f"what colour is the {u.kind}?", u.color))
        out.append(("size_of", f"what size is the {u.kind}?", u.size))
    return out


def attention_of(pipe: ArmPipeline, scenes: list[shapes.Scene], world) -> dict[str, float]:
    prompts = [pipe.encode_text(shapes.caption(s, world.grid)) for s in scenes]
    codes = pipe.encode_images([shapes.render(s, world) for s in scenes]).tolist()
    return attention.summarize(attention.condition_entropy(pipe.model, attention.generate_docs(prompts, codes, pipe.layout)))


def summarize(rows: list[dict]) -> dict[str, float]:
    return {**summarize_attributes(rows), "exact_scene": float(np.mean([r["exact"] for r in rows]))}


def study(model_dir: str, cfg, n: int, seed: int, split: str = "novel") -> dict:
    world = cfg.world
    pipe = ArmPipeline.from_pretrained(model_dir)
    scenes = novel_scenes(world, n, seed) if split == "novel" else training_scenes(cfg, n)
    t0 = time.perf_counter()
    images = []
    for i in range(0, n, 32):
        batch = [shapes.caption(s, world.grid) for s in scenes[i : i + 32]]
        images += pipe.generate(batch, seed=seed * 1_000_000 + i)
    rows = []
    for scene, image in zip(scenes, images):
        parsed = parse(image, world)
        rows.append({**object_attributes(scene.objects, parsed), "exact": float(parsed == scene)})
    summary, intervals = summarize(rows), summary_intervals(rows, summarize)
    out: dict = {"model": model_dir, "split": split, "prompts": n, "objects": sum(r["objects"] for r in rows)}
    for key, value in summary.items():
        out[key], out[f"{key}_interval"] = value, list(intervals[key])
    qrng = random.Random(f"attributes-questions:{seed}")
    asked = [(s, q) for s in scenes for q in questions_of(s, qrng, world)]
    answers = []
    for i in range(0, len(asked), 32):
        chunk = asked[i : i + 32]
        answers += pipe.describe([shapes.render(s, world) for s, _ in chunk], [q for _, (_, q, _) in chunk],
                                 seed=seed * 1_000_000 + 500_000 + i)
    for t in QUESTIONS:
        ok = np.array([exact_match(a, ans) for a, (_, (tt, _, ans)) in zip(answers, asked) if tt == t], dtype=float)
        out[f"vqa_{t}"] = float(ok.mean())
        out[f"vqa_{t}_interval"] = list(bootstrap_interval(ok))
        out[f"vqa_{t}_questions"] = len(ok)
    out.update(attention_of(pipe, scenes[:64], world))
    out["seconds"] = round(time.perf_counter() - t0, 1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+", help="NAME=MODEL_DIR")
    ap.add_argument("--out", required=True)
    ap.add_argument("--prompts", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--split", choices=("novel", "train"), default="novel",
                    help="novel held-out scenes, or the shapes source's own training scenes")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--preset", default=None)
    args = ap.parse_args()
    cfg = load_config(args.params, preset=args.preset)
    path = Path(args.out)
    results = json.loads(path.read_text())["runs"] if path.is_file() else {}
    for spec in args.models:
        name, _, model_dir = spec.partition("=")
        results[name] = study(model_dir, cfg, args.prompts, args.seed, args.split)
        print(name, {k: round(v, 3) for k, v in results[name].items() if isinstance(v, float)}, flush=True)
        atomic_write_json(path, {"preset": cfg.preset, "reader": "oracle", "runs": results})


if __name__ == "__main__":
    main()
