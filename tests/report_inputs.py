"""A run's outputs as the stages write them (metrics/*.json, plots/<stage>/ curves, reports/eval_*/ grids),
built in a temp folder for the report tests.

Each model's score of a metric is 0.2 + 0.01 * (the metric's place in HEADLINE + ATTRIBUTES)
+ 0.002 * (its column in HEADLINE_COLUMNS) + the model's shift; intervals are [score - 0.05,
score + 0.04]; every floor is 0.1 and every reconstruction 0.9.
"""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from arm.curves import write_curve
from arm.eval.report import ATTRIBUTES, HEADLINE, HEADLINE_COLUMNS

SHIFTS = {"arm-base": 0.0, "arm-rl": 0.1}
GATE = {
    "candidate": "arm-rl", "candidate_metrics": "metrics/eval_arm-rl.json", "candidate_sha256": None,
    "promoted": None, "passed": False,
    "checks": [
        {"kind": "threshold", "metric": "shapes_geneval.overall", "value": 0.304, "limit": 0.5, "passed": False,
         "reference": None, "note": ""},
        {"kind": "over_floor", "metric": "understanding.vqa_accuracy", "value": 0.344, "limit": 0.2, "passed": True,
         "reference": 0.1, "note": ""},
        # an attribute the headline does not list: the gate checks it, so the headline shows it
        {"kind": "threshold", "metric": "shapes_wise.color_accuracy", "value": None, "limit": 0.3, "passed": False,
         "reference": None, "note": "missing <from> candidate"},
    ],
    "failed": ["threshold:shapes_geneval.overall", "threshold:shapes_wise.color_accuracy"],
}


def eval_metrics(model: str, shift: float) -> dict:
    """An `arm evaluate` metrics file, with the fields the eval report reads."""
    scores: dict = {}
    intervals: dict = {}
    floor: dict = {}
    recon: dict = {}
    for i, (bench, metric) in enumerate((*HEADLINE, *ATTRIBUTES)):
        if (bench, metric) == ("shapes_wise", "color_accuracy"):
            continue  # scored by no model: the gate's check of it fails as missing
        for j, (_, prefix) in enumerate(HEADLINE_COLUMNS):
            v = round(0.2 + 0.01 * i + 0.002 * j + shift, 6)
            scores.setdefault(bench, {})[prefix + metric] = v
            intervals.setdefault(bench, {})[prefix + metric] = [round(v - 0.05, 6), round(v + 0.04, 6)]
        floor.setdefault(bench, {})[metric] = 0.1
        recon.setdefault(bench, {})[metric] = 0.9
    return {
        "model": model, "model_dir": f"models/{model}", "preset": "micro",
        "prompts": {"dir": "data/eval_prompts", "seed": 7, "manifest_sha256": "ab" * 32,
                    "training_overlap": {"shapes": 0.0}},
        "reconstruction_source": "ground truth through the visual tokenizer",
        "floor_source": "fixed candidate-free references",
        "judge": {"clean": {"exact_scene": 1.0, "color": 0.99}, "train_seconds": 12.5},
        "scores": scores, "intervals": intervals, "floor": floor, "reconstruction": recon,
        # the long tail a reader should not have to scroll past
        "info": {bench: {f"item_{k}": {"n": k, "ok": k % 2} for k in range(60)} for bench in scores},
        "skipped": {},
    }


def write_run(root: Path) -> Path:
    (root / "metrics").mkdir(parents=True)
    for model, shift in SHIFTS.items():
        (root / "metrics" / f"eval_{model}.json").write_text(json.dumps(eval_metrics(model, shift)))
        grids = root / "reports" / f"eval_{model}"
        grids.mkdir(parents=True)
        Image.new("RGB", (200, 110), (40, 170, 60)).save(grids / "geneval_colors.png")
    (root / "metrics" / "gate.json").write_text(json.dumps(GATE))
    (root / "metrics" / "curate.json").write_text(json.dumps(
        {"n_kept": 900, "by_source": {"shapes": {"in": 1000, "kept": 900}}, "filters": [{"reason": "too_small"}]}))
    # a validation loss every fifth step only, as the trainers log it
    write_curve(root / "plots" / "pretrain", [{"step": s, "loss": round(3.0 / s, 4), "lr": 1e-3, "tokens": 2048 * s,
                                               "val_loss": None if s % 5 else 3.2 / s} for s in range(1, 41)])
    return root
