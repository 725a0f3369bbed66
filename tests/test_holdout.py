"""The held-out partition (issue 13 item 1-2): training, tokenizer data and RL never draw what
evaluation holds out, checked on the curated DuckDB store, the sources and the RL sampler of the
`tiny` and `small` presets; compositional bindings validated and kept out of training."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from arm.config import ConfigError, load_config
from arm.data import holdout, shapes
from arm.data.curate import curate
from arm.data.shapes import Scene, ShapeObject
from arm.data.store import CuratedStore
from arm.eval import overlap
from arm.eval.prompts import build_prompt_sets, load_prompt_sets, make_sets, training_keys
from arm.rl.prompts import draw_prompts
from arm.tokenizer.data import generated_set

REPO = Path(__file__).resolve().parents[1]


def rl_keys(cfg, n: int) -> overlap.Keys:
    r = cfg.rl
    prompts = draw_prompts(cfg.world, r.tasks, r.seed, 0, n, r.knowledge_fraction)
    records = []
    for p in prompts:
        if p.task == "t2i":
            records.append(("generate", {"scene": p.target.to_json()}, p.text, None, None))
        else:
            records.append(("edit", {"scene": p.source.to_json(), "target_scene": p.target.to_json()},
                            None, None, p.text))
    return overlap.collect(records)


def assert_disjoint(keys: overlap.Keys, sets: dict, world, what: str) -> None:
    assert keys["scene"], f"{what}: no scenes collected (the check would pass vacuously)"
    assert overlap.held_out_scenes(keys, world) == 0, f"{what}: held-out scenes in training"
    hits = overlap.overlap(sets, keys)
    assert set(hits) >= {"geneval", "wise", "edit", "vqa", "caption"}
    assert all(n == 0 for n in hits.values()), f"{what}: eval items found in training: {hits}"


@pytest.mark.parametrize("preset", ["tiny", "small"])
def test_sources_and_rl_sampler_never_draw_an_eval_item(preset):
    cfg = load_config(REPO / "params.yaml", preset=preset)
    sets = make_sets(cfg)
    assert_disjoint(training_keys(cfg), sets, cfg.world, f"{preset} shapes sources")
    # every prompt of the preset's whole RL run
    assert_disjoint(rl_keys(cfg, cfg.rl.steps * cfg.rl.prompts_per_step), sets, cfg.world, f"{preset} RL prompts")


@pytest.mark.parametrize("preset", ["tiny", "small"])
def test_curated_store_holds_no_eval_item(tmp_path, preset):
    """A real curation of the preset's shapes source (its first scenes: the stream is a pure
    function of (seed, index), the full source is checked above), queried through DuckDB."""
    cfg = load_config(REPO / "params.yaml", preset=preset)
    src = next(s for s in cfg.data.sources if s.type == "shapes").model_dump(mode="json")
    src["n_scenes"] = 300
    cfg = load_config(REPO / "params.yaml", preset=preset, overrides=[
        f"data.store={tmp_path / 'store'}", f"data.metrics={tmp_path / 'curate.json'}",
        "data.sources=" + json.dumps([src]), "data.workers=1"])
    curate(cfg)
    with CuratedStore(cfg.data.store) as store:
        rows = store.query("SELECT task, meta, caption, question, instruction FROM samples").itertuples(index=False)
        keys = overlap.collect((t, json.loads(m) if isinstance(m, str) else m, c, q, i) for t, m, c, q, i in rows)
    assert_disjoint(keys, make_sets(cfg), cfg.world, f"{preset} curated store")


def test_eval_sets_are_split_and_their_items_are_held_out(tmp_path, micro_cfg):
    cfg = load_config(REPO / "params.yaml", preset="tiny")
    sets = make_sets(cfg)
    for name in ("geneval", "wise", "edit", "vqa", "caption"):
        assert Counter(i["split"] for i in sets[name]) == {"novel": len(sets[name]) // 2,
                                                           "novel_composition": len(sets[name]) // 2}, name
        for item in sets[name]:
            if name == "edit":
                split = holdout.edit_split(Scene.from_json(item["source_scene"]), Scene.from_json(item["target_scene"]), cfg.world)
            else:
                split = holdout.split_of(Scene.from_json(item["scene"]), cfg.world)
            assert split == item["split"], item["id"]
    # the manifest measures zero overlap on the micro world
    folder = build_prompt_sets(micro_cfg, tmp_path / "prompts")
    _, _, manifest = load_prompt_sets(micro_cfg, folder)
    assert manifest["held_out_scenes_in_training"] == 0
    assert set(manifest["training_overlap"].values()) == {0.0}


def test_bindings_never_reach_training_yet_each_value_does():
    cfg = load_config(REPO / "params.yaml", preset="tiny")
    world = cfg.world
    held = [b.attributes() for b in world.holdout.bindings]
    assert held, "the tiny preset configures compositional bindings"
    keys = training_keys(cfg)
    objects = [o for k in keys["scene"] for o in Scene.from_json(json.loads(k)).objects]
    for b in held:
        assert not any(all(getattr(o, a) == v for a, v in b.items()) for o in objects), b
        for a, v in b.items():  # each value is seen in other combinations
            assert any(getattr(o, a) == v for o in objects), (a, v)
    # no training question names a held-out pair either ("is there a red circle?")
    from arm.data.sources.shapes import scene_records

    src = next(s for s in cfg.data.sources if s.type == "shapes")
    questions = {r.question for i in range(500) for r in scene_records(src, cfg, i) if r.question}
    assert not [q for q in questions if holdout.matches_binding(shapes.question_attributes(q, world), world)]
    # the tokenizer's generated set (tests, development) draws training scenes only
    data = generated_set(world, 48, 200, 0, seed=3)
    assert all(holdout.is_training(Scene.from_json(s), world) for s in data.scenes if s is not None)


def test_partition_is_a_pure_function_of_the_world_and_its_salt():
    cfg = load_config(REPO / "params.yaml", preset="tiny")
    world = cfg.world
    singles = [Scene.of([ShapeObject(r, c, k, col, s)]) for r in range(3) for c in range(3)
               for k in world.kinds for col in world.colors for s in world.sizes]
    splits = Counter(holdout.split_of(s, world) for s in singles)
    assert splits["novel_composition"] == 18 + 24  # red circles (9 cells x 2 sizes) + top-row triangles (3 x 4 x 2)
    novel_share = splits["novel"] / (splits["novel"] + splits["train"])
    assert 0.05 < novel_share < 0.3  # ~ world.holdout.scenes = 0.15
    other = load_config(REPO / "params.yaml", preset="tiny", overrides=["world.holdout.salt=another"]).world
    assert [holdout.split_of(s, world) for s in singles] != [holdout.split_of(s, other) for s in singles]


@pytest.mark.parametrize("bindings, message", [
    ('[{color: red, kind: circle}, {color: red, kind: square}, {color: red, kind: triangle}]', "occurs in no training object"),
    ('[{color: purple, kind: circle}]', "does not have"),
    ('[{color: red}]', "at least two attributes"),
])
def test_bad_bindings_are_refused_with_the_reason(bindings, message):
    with pytest.raises(ConfigError, match=message):
        load_config(REPO / "params.yaml", preset="tiny", overrides=[f"world.holdout.bindings={bindings}"])
