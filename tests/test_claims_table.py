"""The RL claims' table: changes per split and judge over RL seed x eval seed, with intervals
that widen with both the runs' spread and the item bootstrap, and claims only past zero."""

from __future__ import annotations

import pytest

from arm.rl.claims import delta_interval, metric_key, tabulate


def metrics(overall: float, halfwidth: float) -> dict:
    keys = [f"{p}{s}/overall" for p in ("", "oracle/") for s in ("novel", "novel_composition")]
    return {"scores": {"shapes_geneval": {k: overall for k in keys}},
            "intervals": {"shapes_geneval": {k: [overall - halfwidth, overall + halfwidth] for k in keys}}}


def test_metric_keys_name_split_and_judge():
    assert metric_key("shapes_edit.success", "novel", "judge") == "shapes_edit.novel/success"
    assert metric_key("shapes_edit.success", "novel", "oracle") == "shapes_edit.oracle/novel/success"
    assert metric_key("understanding.vqa_accuracy", "novel_composition", "oracle") == "understanding.novel_composition/vqa_accuracy"


def test_interval_adds_run_spread_and_item_noise():
    tight = delta_interval([0.10, 0.10, 0.10], [0.0] * 6)
    assert tight == pytest.approx([0.10, 0.10])
    spread = delta_interval([0.0, 0.1, 0.2], [0.0] * 6)
    items = delta_interval([0.1, 0.1, 0.1], [0.1] * 6)
    both = delta_interval([0.0, 0.1, 0.2], [0.1] * 6)
    for iv in (spread, items, both):
        assert iv[0] < 0.1 < iv[1]
    assert both[1] - both[0] > max(spread[1] - spread[0], items[1] - items[0])
    assert delta_interval([], []) is None


def test_tabulate_pairs_each_run_with_the_base_of_its_eval_seed():
    base = {0: metrics(0.30, 0.05), 1: metrics(0.40, 0.05)}
    runs = {0: {0: metrics(0.50, 0.05), 1: metrics(0.60, 0.05)}, 1: {0: metrics(0.50, 0.05), 1: metrics(0.60, 0.05)}}
    table = tabulate(base, runs)
    row = table["shapes_geneval.novel/overall"]
    assert row["delta"]["mean"] == pytest.approx(0.20) and row["delta"]["std"] == pytest.approx(0.0)
    assert row["rl"]["n"] == 4 and row["base"]["mean"] == pytest.approx(0.35)
    lo, hi = row["delta_interval"]
    assert 0 < lo < 0.2 < hi  # item noise alone keeps it from collapsing to a point
    assert table["shapes_geneval.oracle/novel_composition/overall"]["judge"] == "oracle"
