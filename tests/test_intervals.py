"""Bootstrap intervals over items: coverage, width, degenerate samples, determinism, summaries."""

from __future__ import annotations

import numpy as np
import pytest

from arm.eval.intervals import bootstrap_interval, summary_intervals


def _mean_of(rows: list[dict]) -> dict[str, float]:
    return {"mean": float(np.mean([r["v"] for r in rows]))}


def test_percentile_interval_covers_a_bernoulli_mean_near_nominally():
    p, n, trials = 0.3, 200, 100
    hits = 0
    for seed in range(trials):
        sample = (np.random.default_rng(1000 + seed).random(n) < p).astype(float)
        low, high = bootstrap_interval(sample, n_resamples=1000, seed=seed)
        assert low <= sample.mean() <= high
        hits += low <= p <= high
    assert hits >= 88, f"95% interval held p in only {hits}/{trials} samples"


def test_interval_narrows_like_one_over_sqrt_n():
    def mean_width(n: int) -> float:
        widths = []
        for seed in range(10):
            sample = np.random.default_rng(seed).normal(size=n)
            low, high = bootstrap_interval(sample, n_resamples=2000, seed=seed)
            widths.append(high - low)
        return float(np.mean(widths))

    ratio = mean_width(100) / mean_width(400)
    assert 1.7 < ratio < 2.3  # sqrt(400 / 100) = 2
    assert mean_width(400) == pytest.approx(2 * 1.96 / np.sqrt(400), rel=0.15)


@pytest.mark.parametrize("values", [[1.0] * 50, [0.0] * 7, [0.25] * 3])
def test_all_equal_sample_gives_zero_width_interval(values):
    v = values[0]
    assert bootstrap_interval(values) == (v, v)


def test_single_item_gives_its_own_value():
    assert bootstrap_interval([0.7]) == (0.7, 0.7)
    assert bootstrap_interval([3.0], statistic=np.std) == (0.0, 0.0)


@pytest.mark.parametrize("values", [[], [[1.0, 0.0], [0.0, 1.0]], [1.0, float("nan")]])
def test_empty_two_d_or_nan_input_is_refused(values):
    with pytest.raises(ValueError):
        bootstrap_interval(values)


@pytest.mark.parametrize("kwargs", [{"confidence": 1.0}, {"confidence": 0.0}, {"n_resamples": 0}])
def test_bad_settings_are_refused(kwargs):
    with pytest.raises(ValueError):
        bootstrap_interval([0.0, 1.0], **kwargs)
    with pytest.raises(ValueError):
        summary_intervals([{"v": 1.0}], _mean_of, **kwargs)


def test_rare_events_stay_inside_the_unit_interval():
    sample = np.zeros(300)
    sample[0] = 1.0
    low, high = bootstrap_interval(sample)
    assert 0.0 <= low <= 1 / 300 <= high <= 1.0


def test_bootstrap_interval_is_deterministic_given_seed():
    # Continuous values: on 0/1 data two seeds often land on the same grid of k/n endpoints.
    sample = np.random.default_rng(3).normal(size=150)
    assert bootstrap_interval(sample, seed=5) == bootstrap_interval(sample, seed=5)
    assert bootstrap_interval(sample, seed=5) != bootstrap_interval(sample, seed=6)


def test_other_confidence_levels_nest():
    sample = np.random.default_rng(4).normal(size=200)
    low90, high90 = bootstrap_interval(sample, confidence=0.90)
    low99, high99 = bootstrap_interval(sample, confidence=0.99)
    assert low99 < low90 < high90 < high99


def test_summary_intervals_agree_with_scipy_for_a_plain_mean():
    values = (np.random.default_rng(7).random(300) < 0.3).astype(float)
    rows = [{"v": v} for v in values]
    low, high = summary_intervals(rows, _mean_of, n_resamples=2000, seed=1)["mean"]
    ref_low, ref_high = bootstrap_interval(values, n_resamples=2000, seed=1)
    assert low == pytest.approx(ref_low, abs=0.012)
    assert high == pytest.approx(ref_high, abs=0.012)


def test_summary_intervals_are_deterministic_given_seed():
    rows = [{"v": float(v)} for v in np.random.default_rng(8).normal(size=120)]
    assert summary_intervals(rows, _mean_of, seed=2) == summary_intervals(rows, _mean_of, seed=2)
    assert summary_intervals(rows, _mean_of, seed=2) != summary_intervals(rows, _mean_of, seed=3)


def test_key_missing_from_some_resamples_uses_only_the_resamples_that_have_it():
    # "rare" has one row (value 1), so ~37% of resamples miss it. Where present its mean is 1, so
    # its interval is (1, 1); filling the missing resamples with anything else would widen it.
    rows = [{"cat": "common", "v": float(i % 2)} for i in range(99)] + [{"cat": "rare", "v": 1.0}]

    def per_category(sample: list[dict]) -> dict[str, float]:
        cats: dict[str, list[float]] = {}
        for r in sample:
            cats.setdefault(r["cat"], []).append(r["v"])
        return {c: float(np.mean(v)) for c, v in cats.items()}

    out = summary_intervals(rows, per_category, n_resamples=500, seed=0)
    assert out["rare"] == (1.0, 1.0)
    low, high = out["common"]
    assert low < 0.5 < high


def test_summary_intervals_of_a_single_row_and_of_no_rows():
    assert summary_intervals([{"v": 0.4}], _mean_of) == {"mean": (0.4, 0.4)}
    with pytest.raises(ValueError):
        summary_intervals([], _mean_of)


def test_summary_intervals_bootstrap_a_non_mean_summary():
    # F1 is no mean over items: its interval comes from re-summarizing resampled rows.
    rng = np.random.default_rng(9)
    rows = [{"truth": bool(t), "said": bool(t) if rng.random() < 0.8 else not t} for t in rng.random(300) < 0.5]

    def f1(sample: list[dict]) -> dict[str, float]:
        tp = sum(r["truth"] and r["said"] for r in sample)
        fp = sum(r["said"] and not r["truth"] for r in sample)
        fn = sum(r["truth"] and not r["said"] for r in sample)
        return {"f1": 2 * tp / (2 * tp + fp + fn)}

    point = f1(rows)["f1"]
    low, high = summary_intervals(rows, f1, seed=0)["f1"]
    assert low < point < high
    assert 0.05 < high - low < 0.2  # ~ 4 standard errors of a proportion-like score over 300 items
