import random

import numpy as np

from arm.config import WorldConfig, load_config
from arm.data import oracle, shapes


def test_oracle_exact_on_2000_ground_truth_renders():
    cfg = load_config().world
    rng = random.Random(1234)
    scenes = [shapes.random_scene(rng, cfg) for _ in range(2000)]
    exact = sum(oracle.parse(shapes.render(s, cfg), cfg) == s for s in scenes) / len(scenes)
    assert exact >= 0.99


def test_oracle_on_a_4x4_world_and_other_palette():
    cfg = WorldConfig(image_size=64, grid=4, colors=["purple", "orange", "cyan", "gray"], max_objects=5)
    rng = random.Random(7)
    scenes = [shapes.random_scene(rng, cfg) for _ in range(300)]
    assert sum(oracle.parse(shapes.render(s, cfg), cfg) == s for s in scenes) >= 297


def test_oracle_reads_blank_as_empty_and_tolerates_noise():
    cfg = WorldConfig()
    assert oracle.parse(np.full((48, 48, 3), 255, np.uint8), cfg).objects == ()
    rng = random.Random(5)
    noise = np.random.default_rng(5)
    scenes = [shapes.random_scene(rng, cfg) for _ in range(200)]
    noisy = [np.clip(shapes.render_array(s, cfg) + noise.normal(0, 12, (48, 48, 3)), 0, 255) for s in scenes]
    assert sum(oracle.parse(img, cfg) == s for img, s in zip(noisy, scenes)) >= 196


def test_edits_change_exactly_what_they_say():
    cfg = WorldConfig()
    rng = random.Random(0)
    for _ in range(500):
        scene = shapes.random_scene(rng, cfg)
        instruction, target, op = shapes.random_edit(rng, scene, cfg)
        before, after = set(scene.objects), set(target.objects)
        changed = len(before ^ after)
        assert changed == {"add": 1, "remove": 1}.get(op, 2), (instruction, op)
        assert cfg.min_objects <= len(target.objects) <= cfg.max_objects


def test_vqa_answers_match_the_scene():
    cfg = WorldConfig()
    rng = random.Random(3)
    for _ in range(500):
        scene = shapes.random_scene(rng, cfg)
        q, a = shapes.vqa_pair(rng, scene, cfg)
        if q.startswith("how many"):
            assert a == shapes.NUMBER_WORDS[len(scene.objects)]
        if q.startswith("is there"):
            color, kind = q[len("is there a "):-1].split()
            assert (a == "yes") == any(o.color == color and o.kind == kind for o in scene.objects)
