"""Benchmark aggregates: per-sample checks -> the numbers a benchmark reports.

Each `score_*` returns (summary, per_sample) and its summary is `summarize_*(per_sample)`, so
run.py can summarise any subset (a split) or resample (a bootstrap interval) of the same rows.
The evaluate modules in eval_modules/ are thin adapters over these. The image scorers read
images with `reader` (images -> scenes): the oracle by default, the learned judge in evaluation.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence

import numpy as np
import torch
from PIL import Image

from arm.config import WorldConfig
from arm.data.images import to_uint8
from arm.data.oracle import parse
from arm.data.shapes import Scene
from arm.eval.answers import exact_match, parse_caption, question_type, scene_f1
from arm.eval.checks import (
    GENEVAL_CATEGORIES,
    OBJECT_ATTRIBUTES,
    WISE_ASPECTS,
    edit_check,
    edit_overall,
    geneval_check,
    perceptual_quality,
    object_attributes,
    wise_check,
)
from arm.eval.image_metrics import code_stats, reconstruction_scores

Summary = dict[str, float]
Reader = Callable[[Sequence[Image.Image]], list[Scene]]


def oracle_reader(world: WorldConfig) -> Reader:
    return lambda images: [parse(im, world) for im in images]


def _mean(xs) -> float:
    xs = list(xs)
    return float(sum(xs) / len(xs)) if xs else 0.0


def summarize_attributes(per_sample: Sequence[dict]) -> Summary:
    """`object_<attribute>`: the share of stated objects, pooled over samples, whose attribute the
    image shows (arm.eval.checks.object_attributes); 0 when no sample states an object."""
    n = sum(s["objects"] for s in per_sample)
    return {f"object_{a}": sum(s[f"{a}_hits"] for s in per_sample) / n if n else 0.0 for a in OBJECT_ATTRIBUTES}


def _need_same_length(a: Sequence, b: Sequence, what: str) -> None:
    if len(a) != len(b):
        raise ValueError(f"{what}: {len(a)} predictions but {len(b)} references")
    if not len(a):
        raise ValueError(f"{what}: no predictions to score")


def _scene(value) -> Scene:
    return value if isinstance(value, Scene) else Scene.from_json(value)


def score_geneval(images: Sequence[Image.Image], specs: Sequence[dict], world: WorldConfig, reader: Reader | None = None):
    """specs: {category, scene}. overall = mean of the category accuracies, as in GenEval."""
    _need_same_length(images, specs, "shapes_geneval")
    per_sample = []
    for parsed, spec in zip((reader or oracle_reader(world))(images), specs):
        scene = _scene(spec["scene"])
        ok = geneval_check(spec["category"], scene, parsed)
        per_sample.append({"category": spec["category"], "correct": ok, "exact": parsed == scene,
                           "parsed": parsed.to_json(), **object_attributes(scene.objects, parsed)})
    return summarize_geneval(per_sample), per_sample


def summarize_geneval(per_sample: Sequence[dict]) -> Summary:
    by_cat = defaultdict(list)
    for s in per_sample:
        by_cat[s["category"]].append(s["correct"])
    summary = {cat: _mean(by_cat[cat]) for cat in GENEVAL_CATEGORIES if cat in by_cat}
    summary["overall"] = _mean(summary.values())
    summary["exact_scene"] = _mean(s["exact"] for s in per_sample)
    summary.update(summarize_attributes(per_sample))
    return summary


def score_wise(images: Sequence[Image.Image], scenes: Sequence, world: WorldConfig, reader: Reader | None = None):
    """score: share of knowledge prompts whose image parses to exactly the implied scene."""
    _need_same_length(images, scenes, "shapes_wise")
    per_sample = [{**wise_check(_scene(scene), parsed), "parsed": parsed.to_json()}
                  for parsed, scene in zip((reader or oracle_reader(world))(images), scenes)]
    return summarize_wise(per_sample), per_sample


def summarize_wise(per_sample: Sequence[dict]) -> Summary:
    summary = {"score": _mean(s["match"] for s in per_sample)}
    summary.update({f"{a}_accuracy": _mean(s[a] for s in per_sample) for a in WISE_ASPECTS})
    return summary


def score_edit(images: Sequence[Image.Image], specs: Sequence[dict], world: WorldConfig, tolerance: int,
               reader: Reader | None = None):
    """specs: {source_scene, target_scene, op}. GEdit's SC, PQ and overall (0-10), plus
    edit success (the instruction fulfilled *and* every untouched cell preserved: wiping the
    image does not "remove" an object), fulfilled (the instruction alone) and preservation of the
    untouched cells (0-1, over the samples that have something outside the edit). Perceptual
    quality stays the oracle's (it compares the ink with a clean render of the oracle's reading)."""
    _need_same_length(images, specs, "shapes_edit")
    per_sample = []
    for image, parsed, spec in zip(images, (reader or oracle_reader(world))(images), specs):
        check = edit_check(_scene(spec["source_scene"]), _scene(spec["target_scene"]), parsed, world.grid)
        pq = perceptual_quality(image, world, tolerance)
        done = check["fulfilled"] == 1.0 and check["preservation"] in (None, 1.0)
        row = {**check, "success": float(done), "perceptual_quality": pq,
               "overall": edit_overall(check["semantic_consistency"], pq),
               "op": spec.get("op", "edit"), "parsed": parsed.to_json()}
        per_sample.append(row)
    return summarize_edit(per_sample), per_sample


def summarize_edit(per_sample: Sequence[dict]) -> Summary:
    by_op = defaultdict(list)
    for s in per_sample:
        by_op[s["op"]].append(s["success"])
    summary = {
        "overall": _mean(s["overall"] for s in per_sample),
        "semantic_consistency": _mean(s["semantic_consistency"] for s in per_sample),
        "perceptual_quality": _mean(s["perceptual_quality"] for s in per_sample),
        "success": _mean(s["success"] for s in per_sample),
        "fulfilled": _mean(s["fulfilled"] for s in per_sample),
        "preservation": _mean(s["preservation"] for s in per_sample if s["preservation"] is not None),
    }
    summary.update({f"success_{op}": _mean(v) for op, v in sorted(by_op.items())})
    summary.update(summarize_attributes(per_sample))
    return summary


def score_vqa(predictions: Sequence[str], references: Sequence[str], questions: Sequence[str]):
    """Exact match after normalisation, overall and per question type."""
    _need_same_length(predictions, references, "understanding/vqa")
    if len(questions) != len(references):
        raise ValueError(f"understanding/vqa: {len(questions)} questions for {len(references)} references")
    per_sample = [{"correct": exact_match(pred, ref), "type": question_type(q)}
                  for pred, ref, q in zip(predictions, references, questions)]
    return summarize_vqa(per_sample), per_sample


def summarize_vqa(per_sample: Sequence[dict]) -> Summary:
    by_type = defaultdict(list)
    for s in per_sample:
        by_type[s["type"]].append(s["correct"])
    summary = {"vqa_accuracy": _mean(s["correct"] for s in per_sample)}
    summary.update({f"vqa_{t}": _mean(v) for t, v in sorted(by_type.items())})
    return summary


def score_captions(predictions: Sequence[str], scenes: Sequence, grid: int):
    """Scene-graph F1: each caption is parsed back into objects and matched to the true scene."""
    _need_same_length(predictions, scenes, "understanding/caption")
    per_sample = []
    for pred, scene in zip(predictions, scenes):
        objs = parse_caption(pred, grid)
        ref = _scene(scene)
        per_sample.append({**scene_f1(objs, ref), "exact": Scene.of(objs) == ref})
    return summarize_captions(per_sample), per_sample


def summarize_captions(per_sample: Sequence[dict]) -> Summary:
    return {
        "caption_f1": _mean(s["f1"] for s in per_sample),
        "caption_precision": _mean(s["precision"] for s in per_sample),
        "caption_recall": _mean(s["recall"] for s in per_sample),
        "caption_exact": _mean(s["exact"] for s in per_sample),
    }


def score_fmnist_generation(images: Sequence[Image.Image], labels: Sequence[int], judge):
    """Share of class-conditional samples the judge recognises as the prompted class."""
    _need_same_length(images, labels, "fmnist/generation")
    pred = judge.predict(list(images))
    labels = np.asarray(labels, dtype=np.int64)
    correct = pred == labels
    summary = {"generation_accuracy": float(correct.mean()), "blank_fraction": float((pred < 0).mean())}
    per_sample = [{"correct": bool(c), "predicted": int(p)} for c, p in zip(correct, pred)]
    return summary, per_sample


def score_fmnist_understanding(predictions: Sequence[str], references: Sequence[str], kinds: Sequence[str]):
    """`understanding_accuracy`: naming the class ("what is this?"); `vqa_accuracy`: every question."""
    _need_same_length(predictions, references, "fmnist/understanding")
    per_sample, by_kind = [], defaultdict(list)
    for pred, ref, kind in zip(predictions, references, kinds):
        ok = exact_match(pred, ref)
        by_kind[kind].append(ok)
        per_sample.append({"correct": ok, "kind": kind})
    summary = {"understanding_accuracy": _mean(by_kind.get("what", [])),
               "vqa_accuracy": _mean(s["correct"] for s in per_sample)}
    summary.update({f"vqa_{k}": _mean(v) for k, v in sorted(by_kind.items()) if k != "what"})
    return summary, per_sample


def score_tokenizer(reconstructions: Sequence[Image.Image], originals: Sequence[Image.Image],
                    codes: torch.Tensor | np.ndarray | None = None, codebook_size: int | None = None):
    """PSNR, SSIM and code usage / perplexity as arm/eval/image_metrics.py defines them (the
    tokenizer's own evaluation reports the same numbers). Reconstructions are resized to their
    originals (arm.data.images' one resize policy); both are normalised as the model sees images."""
    _need_same_length(reconstructions, originals, "tokenizer")
    scores = []
    for recon, orig in zip(reconstructions, originals):  # one at a time: originals may differ in size
        target = torch.from_numpy(to_uint8([orig]))
        scores.append(reconstruction_scores(torch.from_numpy(to_uint8([recon], (target.shape[3], target.shape[2]))), target))
    psnr, ssim = torch.cat([p for p, _ in scores]), torch.cat([s for _, s in scores])
    summary = {"psnr": float(psnr.mean()), "ssim": float(ssim.mean())}
    per_sample = [{"psnr": float(p), "ssim": float(s)} for p, s in zip(psnr, ssim)]
    if codes is not None:
        if not codebook_size:
            raise ValueError("tokenizer: codes given without codebook_size")
        try:
            stats = code_stats(codes, codebook_size)
        except ValueError as e:
            raise ValueError(f"tokenizer: {e}") from None
        summary.update({k: stats[k] for k in ("code_usage", "code_perplexity")})
    return summary, per_sample
