"""Held-out prompt sets: deterministic files, sizes from params, own seed, refuses stale or edited sets."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from arm.config import load_config
from arm.data.oracle import parse
from arm.data.shapes import Scene
from arm.eval.answers import answer_from_scene, parse_caption
from arm.eval.images import render
from arm.eval.prompts import PromptSetError, build_prompt_sets, load_prompt_sets

REPO = Path(__file__).resolve().parents[1]


def _cfg(*overrides):
    return load_config(REPO / "params.yaml", preset="micro", overrides=list(overrides))


def test_build_is_deterministic_and_sized_by_params(tmp_path):
    cfg = _cfg()
    a = build_prompt_sets(cfg, tmp_path / "a")
    b = build_prompt_sets(cfg, tmp_path / "b")
    for f in sorted(p.name for p in a.iterdir()):
        assert (a / f).read_bytes() == (b / f).read_bytes(), f
    sets, prior, manifest = load_prompt_sets(cfg, a)
    p = cfg.eval.prompts
    splits = 2  # novel and novel_composition
    assert manifest["counts"] == {
        "geneval": splits * 6 * p.geneval_per_category, "wise": splits * p.wise, "edit": splits * p.edit,
        "vqa": splits * p.vqa, "caption": splits * p.caption, "fmnist_gen": 10 * p.fmnist_per_class,
        "pope": len(sets["pope"]),  # sized per scene below
        "fmnist_und": 2 * 10 * p.fmnist_per_class,
    }  # no geneval_aspect: a square world has no other scene shapes, and its folder stays as it was
    assert sets["geneval_aspect"] == [] and not (a / "geneval_aspect.jsonl").exists()
    assert set(prior["vqa"]["by_type"]) <= {"count", "shape_at", "exists", "color_of", "size_of"}
    assert prior["vqa"]["by_question"]["how many shapes are there?"] in ("one", "two", "three")
    assert set(manifest["training_overlap"]) == {"geneval", "wise", "edit", "vqa", "caption", "pope"}
    # POPE: per scene, its positives and as many negatives per sampling
    pope = Counter((i["scene_index"], i["sampling"]) for i in sets["pope"])
    assert {s for _, s in pope} == {"shared", "random", "popular", "adversarial"}
    assert len({i["scene_index"] for i in sets["pope"]}) == 2 * p.pope
    other = build_prompt_sets(_cfg("eval.prompts.seed=10001"), tmp_path / "c")
    assert (other / "geneval.jsonl").read_bytes() != (a / "geneval.jsonl").read_bytes()


def test_items_are_consistent_with_their_scenes(tmp_path):
    cfg = _cfg("eval.prompts.geneval_per_category=10", "eval.prompts.vqa=40", "eval.prompts.caption=20")
    sets, _, _ = load_prompt_sets(cfg, build_prompt_sets(cfg, tmp_path))
    by_cat = Counter((i["category"], i["split"]) for i in sets["geneval"])
    assert set(by_cat.values()) == {10}
    for i in sets["geneval"]:
        scene = Scene.from_json(i["scene"])
        assert Scene.of(parse_caption(i["prompt"], cfg.world.grid)) == scene  # the prompt states the scene
        if i["category"] == "counting":
            assert len(scene.objects) >= 2 and len({o.kind for o in scene.objects}) == 1
        if i["category"] == "color_attr":
            assert len({o.kind for o in scene.objects}) == 2 and len({o.color for o in scene.objects}) == 2
    for i in sets["vqa"]:  # the reference answer is what the scene (and so its render) says
        assert answer_from_scene(i["question"], parse(render(i["scene"], cfg.world), cfg.world), cfg.world.grid) == i["answer"]
    for i in sets["fmnist_und"]:
        assert i["kind"] in ("what", "footwear", "top", "is_class")


def test_refuses_stale_edited_or_missing_sets(tmp_path):
    cfg = _cfg()
    out = build_prompt_sets(cfg, tmp_path / "p")
    with pytest.raises(PromptSetError, match="another world"):
        load_prompt_sets(_cfg("world.max_objects=2"), out)
    with pytest.raises(PromptSetError, match="eval.prompts settings"):
        load_prompt_sets(_cfg("eval.prompts.wise=5"), out)
    lines = (out / "vqa.jsonl").read_text().splitlines()
    item = json.loads(lines[0])
    item["answer"] = "banana"
    (out / "vqa.jsonl").write_text("\n".join([json.dumps(item, sort_keys=True), *lines[1:]]) + "\n")
    with pytest.raises(PromptSetError, match="checksum"):
        load_prompt_sets(cfg, out)
    with pytest.raises(PromptSetError, match="arm eval-prompts"):
        load_prompt_sets(cfg, tmp_path / "nothing")


def test_eval_seed_must_differ_from_training():
    with pytest.raises(Exception, match="eval.prompts.seed"):
        _cfg("eval.prompts.seed=5")  # below 10000: the range training seeds live in
    cfg = _cfg("eval.prompts.seed=10000", "data.sources=[{type: shapes, seed: 10000, n_scenes: 5}]")
    with pytest.raises(PromptSetError, match="training source seed"):
        build_prompt_sets(cfg, "/nonexistent/never-written")
