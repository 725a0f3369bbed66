"""POPE-style object-hallucination probe on the shapes world (issue 13, item 5).

POPE (Li et al., 2023, "Evaluating Object Hallucination in Large Vision-Language Models") asks
yes/no existence questions about an image: positives name objects it holds, negatives name
objects it lacks, drawn three ways:
- random:      uniform over the absent objects;
- popular:     the absent objects most frequent in training;
- adversarial: the absent objects that co-occur most in training with the ones present.
A model that answers from priors rather than from the image says "yes" to popular and
co-occurring objects, so it loses more on those two samplings than on random.

Here an "object" is a (colour, kind) pair and the question is the VQA training template
"is there a {color} {kind}?" (arm.data.shapes.vqa_pair), so the model is asked in the form it
was trained on.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from itertools import permutations

from arm.config import WorldConfig
from arm.data.shapes import Scene, exists_question
from arm.eval.answers import normalize_answer

Pair = tuple[str, str]  # (colour, kind)

SAMPLINGS = ("random", "popular", "adversarial")
# Positives are asked once and belong to every sampling's subset, as in POPE where each
# sampling's file holds the same positives beside its own negatives.
SHARED = "shared"
METRICS = ("accuracy", "precision", "recall", "f1", "yes_ratio")


@dataclass(frozen=True)
class PopeStats:
    """Training-distribution counts, image-level: a pair counts once per scene that holds it."""

    frequency: Counter = field(default_factory=Counter)  # pair -> scenes holding it
    cooccurrence: Counter = field(default_factory=Counter)  # (pair, other) -> scenes holding both; symmetric

    def cooccurrence_with(self, candidate: Pair, present: Iterable[Pair]) -> int:
        """POPE's adversarial score: co-occurrences of `candidate` summed over the present pairs."""
        return sum(self.cooccurrence[(p, candidate)] for p in present)


def scene_pairs(scene: Scene) -> set[Pair]:
    return {(o.color, o.kind) for o in scene.objects}


def object_stats(scenes: Iterable[Scene]) -> PopeStats:
    """Pair frequencies and co-occurrences over scenes drawn like training."""
    stats = PopeStats()
    for scene in scenes:
        pairs = scene_pairs(scene)
        stats.frequency.update(pairs)
        stats.cooccurrence.update(permutations(pairs, 2))
    return stats


def question(pair: Pair) -> str:
    """vqa_pair's existence question, so the model's training format applies."""
    return exists_question(*pair)


def _item(pair: Pair, answer: str, sampling: str, scene_index: int) -> dict:
    return {"question": question(pair), "answer": answer, "sampling": sampling,
            "pair": list(pair), "scene_index": scene_index}


def _ranked(candidates: list[Pair], score) -> list[Pair]:
    """Highest score first; ties keep world order (colour, then kind), so the choice is deterministic."""
    return sorted(candidates, key=lambda p: -score(p))


def _negatives(absent: list[Pair], present: set[Pair], stats: PopeStats, rng: random.Random, k: int) -> dict:
    return {
        "random": rng.sample(absent, k),
        "popular": _ranked(absent, lambda p: stats.frequency[p])[:k],
        "adversarial": _ranked(absent, lambda p: stats.cooccurrence_with(p, present))[:k],
    }


def pope_items(scenes: list[Scene], world: WorldConfig, stats: PopeStats, rng: random.Random,
               per_scene: int) -> list[dict]:
    """Per scene: up to `per_scene` positives (present pairs, without replacement) and, for each
    sampling, as many negatives as positives (fewer only if the world has too few absent pairs).

    Positives carry sampling SHARED; negatives carry their sampling. Pairs are enumerated in
    world order (colours, then kinds) before any sampling, so the items are a pure function of
    the rng state and the arguments. An empty scene contributes nothing (no positive to balance).
    """
    if per_scene < 1:
        raise ValueError(f"per_scene {per_scene}: need at least one question per scene")
    world_pairs = [(c, k) for c in world.colors for k in world.kinds]
    items = []
    for index, scene in enumerate(scenes):
        present = scene_pairs(scene)
        ordered_present = [p for p in world_pairs if p in present]
        positives = rng.sample(ordered_present, min(per_scene, len(ordered_present)))
        absent = [p for p in world_pairs if p not in present]
        k = min(len(positives), len(absent))
        items += [_item(p, "yes", SHARED, index) for p in positives]
        for sampling, pairs in _negatives(absent, present, stats, rng, k).items():
            items += [_item(p, "no", sampling, index) for p in pairs]
    return items


def _rates(rows: list[dict]) -> dict[str, float]:
    """POPE's five numbers over one sampling's subset; the positive class is "yes"."""
    said_yes = [r["prediction"] == "yes" for r in rows]
    is_yes = [r["answer"] == "yes" for r in rows]
    tp = sum(s and t for s, t in zip(said_yes, is_yes))
    predicted_yes, actual_yes = sum(said_yes), sum(is_yes)
    precision = tp / predicted_yes if predicted_yes else 0.0
    recall = tp / actual_yes if actual_yes else 0.0
    return {
        "accuracy": sum(r["correct"] for r in rows) / len(rows),
        "precision": precision,
        "recall": recall,
        "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
        "yes_ratio": predicted_yes / len(rows),
    }


def summarize_pope(per_sample: Sequence[dict]) -> dict[str, float]:
    """`pope_<sampling>_<metric>` for every sampling with rows, and `pope_f1`, the mean F1 over them.

    Takes score_pope's per-sample rows, so summary_intervals can bootstrap it over items.
    """
    shared = [r for r in per_sample if r["sampling"] == SHARED]
    summary, f1s = {}, []
    for sampling in SAMPLINGS:
        subset = shared + [r for r in per_sample if r["sampling"] == sampling]
        if not subset:
            continue
        rates = _rates(subset)
        summary.update({f"pope_{sampling}_{m}": rates[m] for m in METRICS})
        f1s.append(rates["f1"])
    if f1s:
        summary["pope_f1"] = sum(f1s) / len(f1s)
    return summary


def score_pope(predictions: Sequence[str], items: Sequence[dict]) -> tuple[dict[str, float], list[dict]]:
    """(summary, per_sample) of a model's answers to pope_items.

    Answers are normalised like arm.eval.answers.exact_match. An answer that is neither "yes"
    nor "no" after normalisation is wrong on every item: it never counts as a "yes" (so it adds
    no true or false positive, and a positive it answers is a miss) and never as a correct "no".
    For precision, recall and F1 that equals mapping it to "no"; accuracy is stricter, since a
    non-answer earns no credit on negatives either. POPE's own script maps every answer without
    "no"/"not" to "yes"; for one-word answers either mapping rewards a non-answer on half the
    items, which a probe of what the model sees should not.
    """
    if len(predictions) != len(items):
        raise ValueError(f"pope: {len(predictions)} predictions but {len(items)} items")
    if not items:
        raise ValueError("pope: no predictions to score")
    per_sample = []
    for prediction, item in zip(predictions, items):
        said = normalize_answer(prediction)
        per_sample.append({"sampling": item["sampling"], "scene_index": item["scene_index"], "pair": item["pair"],
                           "answer": item["answer"], "prediction": said, "correct": said == item["answer"]})
    return summarize_pope(per_sample), per_sample
