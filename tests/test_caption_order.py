"""Training captions with the attributes of each object in varied order (shapes source option
`attribute_order: varied`), read back by the caption parser whatever the order."""

from __future__ import annotations

import collections

from arm.config import ArmConfig, ShapesSourceConfig
from arm.data.shapes import Scene
from arm.data.sources.shapes import scene_records
from arm.eval.answers import parse_caption


def _records(order: str, n: int = 60):
    cfg = ArmConfig()
    src = ShapesSourceConfig(attribute_order=order, knowledge_fraction=0.0)
    return [r for i in range(n) for r in scene_records(src, cfg, i)], cfg


def test_varied_order_changes_only_the_captions_and_each_parses_back_to_its_scene():
    canonical, cfg = _records("canonical")
    varied, _ = _records("varied")
    assert [(r.ref, r.task, r.question, r.instruction, r.meta) for r in canonical] == \
           [(r.ref, r.task, r.question, r.instruction, r.meta) for r in varied]
    first_words = collections.Counter()
    for c, v in zip(canonical, varied):
        for text_c, text_v in ((c.caption, v.caption), (c.answer, v.answer)):
            if text_c and "scene" in c.meta and text_c.startswith("a "):
                scene = Scene.from_json(c.meta["scene"])
                assert Scene.of(parse_caption(text_c, cfg.world.grid)) == scene
                assert Scene.of(parse_caption(text_v, cfg.world.grid)) == scene
                first_words[text_v.split()[1]] += 1
    # canonical captions always start with the size; varied ones with every kind of attribute
    kinds = {w: ("size" if w in cfg.world.sizes else "color" if w in cfg.world.colors else "kind") for w in first_words}
    assert set(kinds.values()) == {"size", "color", "kind"}


def test_a_phrase_without_one_size_one_colour_and_one_kind_states_no_object():
    assert parse_caption("a red blue circle in the top left", 3) == []
    assert [o.color for o in parse_caption("a circle red large in the top left", 3)] == ["red"]
