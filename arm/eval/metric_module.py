"""What the in-repo `evaluate` modules share: their MetricInfo and the scene-scoring call.

The modules in eval_modules/ stay single files (that is what `evaluate.load` of a local path
needs); their scoring lives in arm.eval.scoring and their common glue here.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import datasets
import evaluate

from arm.config import WorldConfig


def image_metric_info(description: str, citation: str, kwargs_description: str,
                      references: str = "json") -> evaluate.MetricInfo:
    """Predictions are images; references are JSON strings (`json`) or images (`image`)."""
    ref = datasets.Image() if references == "image" else datasets.Value("string")
    return evaluate.MetricInfo(
        description=description,
        citation=citation,
        inputs_description=kwargs_description,
        features=datasets.Features({"predictions": datasets.Image(), "references": ref}),
    )


def with_per_sample(result: tuple[dict[str, Any], list], return_per_sample: bool) -> dict[str, Any]:
    summary, per_sample = result
    if return_per_sample:
        summary["per_sample"] = per_sample
    return summary


def score_scenes(score: Callable, predictions, references, world, return_per_sample: bool, *extra,
                 reader: Callable | None = None) -> dict[str, Any]:
    """Runs a scene scorer on images and JSON references in the given world, read by `reader`."""
    world = world if isinstance(world, WorldConfig) else WorldConfig.model_validate(world or {})
    return with_per_sample(score(predictions, [json.loads(r) for r in references], world, *extra, reader=reader),
                           return_per_sample)
