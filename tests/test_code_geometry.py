"""Code geometry: whether an attribute is additive over FSQ level digits (arm/tokenizer/geometry.py)."""

from __future__ import annotations

import itertools
import random

import torch

from arm.config import WorldConfig
from arm.data.shapes import random_scene
from arm.tokenizer.geometry import additive_accuracy, attribute_geometry, level_digits, shapes_geometry
from arm.train.perfect import PerfectTokenizer


def test_the_perfect_tokenizer_puts_every_attribute_on_a_level_of_its_own():
    world = WorldConfig()
    perfect = PerfectTokenizer(world)
    rng = random.Random(0)
    scenes = [random_scene(rng, world) for _ in range(200)]
    codes = torch.tensor([perfect.encode_scene(s) for s in scenes])
    geo = shapes_geometry(codes, [s.to_json() for s in scenes], world, perfect.levels)
    assert set(geo) == {f"{m}_{a}" for m in ("additive", "level_purity") for a in ("kind", "color", "size")}
    assert all(v == 1.0 for v in geo.values()), geo


def test_an_attribute_that_needs_an_interaction_of_levels_is_not_additive():
    """Two ternary levels; label A is level 0's digit (additive), label B is whether the two
    digits agree (an interaction: no sum of per-digit parts tells it, and no level alone)."""
    levels = (3, 3)
    codes = torch.tensor([a + 3 * b for a, b in itertools.product(range(3), range(3))] * 4)
    digits = level_digits(codes, levels)
    additive = (digits[:, 0]).clone()
    agree = (digits[:, 0] == digits[:, 1]).long()
    geo = attribute_geometry(codes, {"additive": additive, "agree": agree}, levels)
    assert geo["additive_additive"] == 1.0 and geo["level_purity_additive"] == 1.0
    # the best additive rule gets the 6 disagreeing codes and at most 1 of the 3 agreeing ones
    assert geo["additive_agree"] <= 7 / 9 + 1e-9
    assert geo["level_purity_agree"] == 6 / 9
    assert additive_accuracy(digits, torch.zeros(len(codes), dtype=torch.long), levels) == 1.0
