"""POPE-style hallucination probe: item sampling, scoring conventions, and its bootstrap."""

from __future__ import annotations

import random

import pytest

from arm.config import WorldConfig
from arm.data.shapes import Scene, ShapeObject, random_scene
from arm.eval.answers import answer_from_scene
from arm.eval.intervals import summary_intervals
from arm.eval.pope import (
    SAMPLINGS,
    SHARED,
    PopeStats,
    object_stats,
    pope_items,
    scene_pairs,
    score_pope,
    summarize_pope,
)

WORLD = WorldConfig()


def _obj(color: str, kind: str, row: int = 0, col: int = 0, size: str = "small") -> ShapeObject:
    return ShapeObject(row, col, kind, color, size)


def _scene(*pairs: tuple[str, str]) -> Scene:
    return Scene.of(_obj(c, k, i // 3, i % 3) for i, (c, k) in enumerate(pairs))


def _uniform_scenes(seed: int, n: int) -> list[Scene]:
    rng = random.Random(seed)
    return [random_scene(rng, WORLD) for _ in range(n)]


def _items(seed: int = 0, n: int = 40, per_scene: int = 3):
    scenes = _uniform_scenes(seed, n)
    stats = object_stats(_uniform_scenes(seed + 1, 500))
    return scenes, pope_items(scenes, WORLD, stats, random.Random(seed), per_scene)


def test_object_stats_count_scenes_and_symmetric_cooccurrence():
    two_red_circles = Scene.of([_obj("red", "circle", 0, 0), _obj("red", "circle", 0, 1, "large"),
                                _obj("blue", "square", 1, 1)])
    stats = object_stats([two_red_circles, _scene(("red", "circle"))])
    assert stats.frequency[("red", "circle")] == 2  # once per scene, not per object
    assert stats.frequency[("blue", "square")] == 1
    assert stats.cooccurrence[(("red", "circle"), ("blue", "square"))] == 1
    assert stats.cooccurrence[(("blue", "square"), ("red", "circle"))] == 1
    assert stats.cooccurrence[(("red", "circle"), ("red", "circle"))] == 0


def test_items_use_the_training_question_form_and_the_scene_decides_the_answer():
    scenes, items = _items()
    assert items
    for item in items:
        assert item["question"] == f"is there a {item['pair'][0]} {item['pair'][1]}?"
        assert answer_from_scene(item["question"], scenes[item["scene_index"]], WORLD.grid) == item["answer"]


def test_negatives_are_absent_positives_present_and_each_sampling_is_balanced():
    scenes, items = _items()
    for index, scene in enumerate(scenes):
        mine = [i for i in items if i["scene_index"] == index]
        positives = [tuple(i["pair"]) for i in mine if i["sampling"] == SHARED]
        assert all(i["answer"] == "yes" for i in mine if i["sampling"] == SHARED)
        assert len(positives) == len(set(positives)) == min(3, len(scene_pairs(scene)))
        assert set(positives) <= scene_pairs(scene)
        for sampling in SAMPLINGS:
            negatives = [tuple(i["pair"]) for i in mine if i["sampling"] == sampling]
            assert all(i["answer"] == "no" for i in mine if i["sampling"] == sampling)
            assert len(negatives) == len(set(negatives)) == len(positives)
            assert not set(negatives) & scene_pairs(scene)


def test_positives_are_capped_by_per_scene_and_negatives_by_the_absent_pairs():
    one = _scene(("red", "circle"))
    items = pope_items([one], WORLD, PopeStats(), random.Random(0), per_scene=3)
    assert [i["sampling"] for i in items].count(SHARED) == 1
    assert all([i["sampling"] for i in items].count(s) == 1 for s in SAMPLINGS)

    tight = WorldConfig(colors=["red"], kinds=["circle", "square"], max_objects=2)
    full = _scene(("red", "circle"))
    items = pope_items([full], tight, PopeStats(), random.Random(0), per_scene=1)
    assert [tuple(i["pair"]) for i in items if i["sampling"] != SHARED] == [("red", "square")] * 3
    assert pope_items([Scene.of([])], WORLD, PopeStats(), random.Random(0), per_scene=2) == []
    with pytest.raises(ValueError):
        pope_items([one], WORLD, PopeStats(), random.Random(0), per_scene=0)


def test_popular_negatives_follow_training_frequency_with_ties_in_world_order():
    training = ([_scene(("yellow", "triangle"))] * 5 + [_scene(("green", "square"))] * 3
                + [_scene(("red", "circle"))] * 9)
    stats = object_stats(training)
    scene = _scene(("red", "circle"), ("blue", "circle"), ("blue", "square"))
    items = pope_items([scene], WORLD, stats, random.Random(0), per_scene=3)
    popular = [tuple(i["pair"]) for i in items if i["sampling"] == "popular"]
    # red circle is the most frequent but present; after the two counted pairs come the zero
    # counts in world order (red before green, circle before square).
    assert popular == [("yellow", "triangle"), ("green", "square"), ("red", "square")]


def test_adversarial_negatives_are_ranked_by_cooccurrence_with_the_present_pairs():
    training = (
        [_scene(("red", "circle"), ("blue", "square"))] * 5
        + [_scene(("red", "circle"), ("green", "triangle"))] * 3
        + [_scene(("yellow", "circle"), ("green", "triangle"))] * 3
        + [_scene(("yellow", "square"))] * 50  # frequent but co-occurs with nothing present
    )
    stats = object_stats(training)
    assert stats.cooccurrence_with(("green", "triangle"), {("red", "circle"), ("yellow", "circle")}) == 6
    scene = _scene(("red", "circle"), ("yellow", "circle"))
    items = pope_items([scene], WORLD, stats, random.Random(0), per_scene=2)
    adversarial = [tuple(i["pair"]) for i in items if i["sampling"] == "adversarial"]
    popular = [tuple(i["pair"]) for i in items if i["sampling"] == "popular"]
    # green triangle: 3 + 3 over both present pairs beats blue square's 5 with red circle alone.
    assert adversarial == [("green", "triangle"), ("blue", "square")]
    assert popular[0] == ("yellow", "square")


def test_items_are_deterministic_given_the_rng():
    assert _items(seed=4) == _items(seed=4)
    assert _items(seed=4)[1] != _items(seed=5)[1]


def test_perfect_answerer_scores_one_everywhere():
    _, items = _items()
    summary, per_sample = score_pope([i["answer"] for i in items], items)
    assert len(per_sample) == len(items)
    for sampling in SAMPLINGS:
        for metric in ("accuracy", "precision", "recall", "f1"):
            assert summary[f"pope_{sampling}_{metric}"] == 1.0
        assert summary[f"pope_{sampling}_yes_ratio"] == 0.5
    assert summary["pope_f1"] == 1.0


def test_always_yes_answerer_has_half_precision_and_accuracy():
    _, items = _items()
    summary, _ = score_pope(["Yes."] * len(items), items)  # normalised like exact_match
    for sampling in SAMPLINGS:
        assert summary[f"pope_{sampling}_yes_ratio"] == 1.0
        assert summary[f"pope_{sampling}_recall"] == 1.0
        assert summary[f"pope_{sampling}_precision"] == 0.5
        assert summary[f"pope_{sampling}_accuracy"] == 0.5
        assert summary[f"pope_{sampling}_f1"] == pytest.approx(2 / 3)


def test_an_answer_that_is_neither_yes_nor_no_is_wrong_on_every_item():
    _, items = _items()
    summary, per_sample = score_pope(["red"] * len(items), items)
    assert not any(r["correct"] for r in per_sample)
    for sampling in SAMPLINGS:
        assert summary[f"pope_{sampling}_accuracy"] == 0.0
        assert summary[f"pope_{sampling}_yes_ratio"] == 0.0
        assert summary[f"pope_{sampling}_recall"] == 0.0
        assert summary[f"pope_{sampling}_f1"] == 0.0


def test_an_answerer_biased_to_popular_pairs_loses_more_on_popular_than_on_random():
    # Training favours three pairs; the answerer says yes to them whatever the image shows.
    rng = random.Random(11)
    favourites = [("red", "circle"), ("green", "square"), ("blue", "triangle")]
    pairs = [(c, k) for c in WORLD.colors for k in WORLD.kinds]
    weights = [20 if p in favourites else 1 for p in pairs]
    training = [_scene(*dict.fromkeys(rng.choices(pairs, weights, k=rng.randint(1, 3)))) for _ in range(400)]
    scenes = _uniform_scenes(12, 150)
    items = pope_items(scenes, WORLD, object_stats(training), random.Random(13), per_scene=3)
    answers = ["yes" if tuple(i["pair"]) in favourites or i["answer"] == "yes" else "no" for i in items]
    summary, _ = score_pope(answers, items)
    assert summary["pope_popular_accuracy"] < summary["pope_random_accuracy"] - 0.1
    assert summary["pope_popular_f1"] < summary["pope_random_f1"]
    assert summary["pope_popular_yes_ratio"] > summary["pope_random_yes_ratio"]
    assert summary["pope_random_recall"] == summary["pope_popular_recall"] == 1.0


def test_score_pope_refuses_mismatched_or_empty_input():
    _, items = _items(n=2)
    with pytest.raises(ValueError):
        score_pope(["yes"], items)
    with pytest.raises(ValueError):
        score_pope([], [])


def test_summarize_pope_bootstraps_over_items():
    _, items = _items(n=60)
    rng = random.Random(0)
    answers = [i["answer"] if rng.random() < 0.8 else ("no" if i["answer"] == "yes" else "yes") for i in items]
    summary, per_sample = score_pope(answers, items)
    assert summarize_pope(per_sample) == summary
    intervals = summary_intervals(per_sample, summarize_pope, n_resamples=300, seed=0)
    assert set(intervals) == set(summary)
    for key, value in summary.items():
        low, high = intervals[key]
        assert low <= value <= high, key
    assert intervals["pope_f1"][1] - intervals["pope_f1"][0] > 0.02
