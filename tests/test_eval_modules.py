"""Each benchmark module (loaded with evaluate.load from its local path) on known inputs:
ground-truth renders score perfectly, blank images score zero, half-right sets score exactly
in between, and hand-built cases pin down what each check means."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from arm.data import shapes
from arm.data.oracle import FOREGROUND_DELTA
from arm.data.shapes import Scene, ShapeObject
from arm.eval.checks import edit_check, perceptual_quality
from arm.eval.image_metrics import PSNR_CAP
from arm.eval.scoring import score_edit, score_geneval
from arm.eval.modules import as_reference, load
from arm.eval.prompts import make_sets

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cfg():
    from arm.config import load_config

    return load_config(REPO / "params.yaml", preset="micro")


@pytest.fixture(scope="module")
def sets(cfg):
    return make_sets(cfg)


def _render(cfg, scene_json):
    return shapes.render(Scene.from_json(scene_json), cfg.world)


def _blank(cfg):
    return Image.new("RGB", (cfg.world.image_size,) * 2, tuple(cfg.world.background))


def _half(items, good, bad):
    """Every other item right (even positions), the rest wrong."""
    return [good(i) if k % 2 == 0 else bad(i) for k, i in enumerate(items)]


def _even_share(items) -> float:
    return sum(k % 2 == 0 for k in range(len(items))) / len(items)


def test_modules_load_from_local_paths():
    import evaluate

    from arm.eval.modules import MODULES_DIR

    m = evaluate.load(str(MODULES_DIR / "shapes_geneval"))
    assert m.name == "shapes_geneval" and "GenEval" in m.description
    with pytest.raises(ValueError, match="unknown benchmark module"):
        load("nope")


# ----------------------------------------------------------------------------- geneval


def test_geneval_truth_blank_half(cfg, sets):
    m = load("shapes_geneval")
    items = sets["geneval"]
    refs = [as_reference({"category": i["category"], "scene": i["scene"]}) for i in items]
    truth = m.compute(predictions=[_render(cfg, i["scene"]) for i in items], references=refs, world=cfg.world)
    assert truth["overall"] == 1.0 and truth["exact_scene"] == 1.0
    assert len([k for k in truth if k not in ("overall", "exact_scene") and not k.startswith("object_")]) == 6
    assert [truth[f"object_{a}"] for a in ("color", "kind", "size", "cell")] == [1.0] * 4
    blank = m.compute(predictions=[_blank(cfg)] * len(items), references=refs, world=cfg.world)
    assert blank["overall"] == 0.0 and all(v == 0.0 for v in blank.values())
    # every other item of each category right (micro: one item per category in each of two splits)
    nth = [sum(j["category"] == i["category"] for j in items[:k]) for k, i in enumerate(items)]
    half = m.compute(predictions=[_render(cfg, i["scene"]) if n % 2 == 0 else _blank(cfg) for n, i in zip(nth, items)],
                     references=refs, world=cfg.world)
    cats = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
    assert all(sum(i["category"] == c for i in items) == 2 for c in cats)
    assert all(half[c] == 0.5 for c in cats) and half["overall"] == 0.5


def test_geneval_category_semantics(cfg):
    m = load("shapes_geneval")
    red = ShapeObject(0, 0, "circle", "red", "large")
    blue_sq = ShapeObject(2, 2, "square", "blue", "small")
    spec = Scene.of([red, blue_sq])

    def score(category, drawn, spec=spec):
        ref = as_reference({"category": category, "scene": spec.to_json()})
        return m.compute(predictions=[shapes.render(drawn, cfg.world)], references=[ref], world=cfg.world)[category]

    # The prompt is a full caption: every category needs every stated attribute of every object.
    cats = ("single_object", "two_object", "colors", "position", "color_attr")
    assert all(score(c, spec) == 1.0 for c in cats)
    swapped_colours = Scene.of([replace(red, color="blue"), replace(blue_sq, color="red")])
    moved = Scene.of([replace(red, row=1, col=1), blue_sq])
    resized = Scene.of([replace(red, size="small"), blue_sq])
    for wrong in (swapped_colours, moved, resized):  # GenEval would pass some of these per category
        assert all(score(c, wrong) == 0.0 for c in cats), wrong
    extra = Scene.of([red, blue_sq, ShapeObject(1, 1, "triangle", "green", "small")])
    assert score("two_object", extra) == 0.0  # drawing more than asked fails (no reward for filling cells)
    three = Scene.of([ShapeObject(0, c, "circle", "red", "small") for c in range(3)])
    two = Scene.of([ShapeObject(0, c, "circle", "green", "large") for c in range(2)])
    assert score("counting", two, spec=three) == 0.0 and score("counting", three, spec=three) == 1.0


# ----------------------------------------------------------------------------- wise


def test_wise_truth_blank_half_and_aspects(cfg, sets):
    m = load("shapes_wise")
    items = sets["wise"]
    refs = [as_reference(i["scene"]) for i in items]
    assert m.compute(predictions=[_render(cfg, i["scene"]) for i in items], references=refs, world=cfg.world)["score"] == 1.0
    blank = m.compute(predictions=[_blank(cfg)] * len(items), references=refs, world=cfg.world)
    assert all(v == 0.0 for v in blank.values())
    half = m.compute(predictions=_half(items, lambda i: _render(cfg, i["scene"]), lambda i: _blank(cfg)),
                     references=refs, world=cfg.world)
    assert half["score"] == _even_share(items)
    o = Scene.from_json(items[0]["scene"]).objects[0]
    other = next(c for c in cfg.world.colors if c != o.color)
    wrong = m.compute(predictions=[shapes.render(Scene.of([replace(o, color=other)]), cfg.world)],
                      references=refs[:1], world=cfg.world)
    assert wrong == {"score": 0.0, "kind_accuracy": 1.0, "color_accuracy": 0.0, "size_accuracy": 1.0,
                     "position_accuracy": 1.0}
    g = cfg.world.grid  # the right object plus something in every other cell: no aspect credit
    full = Scene.of([o] + [replace(o, row=r, col=c) for r in range(g) for c in range(g) if (r, c) != (o.row, o.col)])
    filled = m.compute(predictions=[shapes.render(full, cfg.world)], references=refs[:1], world=cfg.world)
    assert all(v == 0.0 for v in filled.values())


# ----------------------------------------------------------------------------- edit


def test_edit_truth_blank_identity_half(cfg, sets):
    m = load("shapes_edit")
    items = sets["edit"]
    refs = [as_reference({k: i[k] for k in ("source_scene", "target_scene", "op")}) for i in items]
    kw = {"world": cfg.world, "tolerance": cfg.eval.pq_tolerance}
    truth = m.compute(predictions=[_render(cfg, i["target_scene"]) for i in items], references=refs, **kw)
    assert truth["overall"] == truth["semantic_consistency"] == truth["perceptual_quality"] == 10.0
    assert truth["success"] == 1.0 and truth["preservation"] == 1.0
    blank = m.compute(predictions=[_blank(cfg)] * len(items), references=refs, **kw)
    for key in ("overall", "semantic_consistency", "perceptual_quality", "success"):
        assert blank[key] == 0.0
    assert blank["preservation"] == 0.0  # every untouched object was wiped
    identity = m.compute(predictions=[_render(cfg, i["source_scene"]) for i in items], references=refs, **kw)
    assert identity["success"] == 0.0 and identity["overall"] == 0.0 and identity["perceptual_quality"] == 10.0
    half = m.compute(predictions=_half(items, lambda i: _render(cfg, i["target_scene"]), lambda i: _blank(cfg)),
                     references=refs, **kw)
    share = _even_share(items)
    assert half["overall"] == 10 * share and half["success"] == share and half["semantic_consistency"] == 10 * share


def test_a_blank_image_does_not_succeed_at_removing_one_of_several_objects(cfg):
    """The removed cell is empty in a blank image, so the instruction alone reads as done; success
    also needs the untouched objects kept. Removing the only object stays a success for blank."""
    a, b = ShapeObject(0, 0, "circle", "red", "large"), ShapeObject(2, 2, "square", "blue", "small")
    specs = [{"source_scene": Scene.of([a, b]).to_json(), "target_scene": Scene.of([b]).to_json(), "op": "remove"},
             {"source_scene": Scene.of([a]).to_json(), "target_scene": Scene.of([]).to_json(), "op": "remove"}]
    summary, rows = score_edit([_blank(cfg)] * 2, specs, cfg.world, cfg.eval.pq_tolerance)
    assert [r["fulfilled"] for r in rows] == [1.0, 1.0]
    assert [r["success"] for r in rows] == [0.0, 1.0]
    assert summary["success"] == summary["success_remove"] == 0.5 and summary["fulfilled"] == 1.0


def test_edit_check_fulfilment_and_over_editing(cfg):
    a, b = ShapeObject(0, 0, "circle", "red", "large"), ShapeObject(2, 2, "square", "blue", "small")
    source = Scene.of([a, b])
    target = Scene.of([replace(a, row=1, col=1), b])  # move the circle to the centre
    g = cfg.world.grid
    done = edit_check(source, target, target, g)
    assert {k: done[k] for k in ("fulfilled", "preservation", "semantic_consistency")} == {
        "fulfilled": 1.0, "preservation": 1.0, "semantic_consistency": 10.0}
    # the moved circle is the one object the instruction puts in place, drawn with all its attributes
    assert done["objects"] == 1 and done["color_hits"] == done["kind_hits"] == done["cell_hits"] == 1
    copied = Scene.of([a, replace(a, row=1, col=1), b])  # drawn at the new place but not removed
    assert edit_check(source, target, copied, g)["fulfilled"] == 0.0
    extra = ShapeObject(0, 2, "triangle", "green", "small")
    over = edit_check(source, target, Scene.of([replace(a, row=1, col=1), b, extra]), g)
    # judged cells outside the edit: (2,2) kept, (0,2) newly drawn -> half preserved
    assert {k: over[k] for k in ("fulfilled", "preservation", "semantic_consistency")} == {
        "fulfilled": 1.0, "preservation": 0.5, "semantic_consistency": 5.0}


def test_perceptual_quality_counts_stray_ink_exactly(cfg):
    w = cfg.world
    scene = Scene.of([ShapeObject(0, 0, "square", "red", "large")])
    arr = np.asarray(shapes.render(scene, w)).copy()
    bg = np.asarray(w.background)
    n_obj = int((np.abs(arr.astype(int) - bg).max(axis=2) > FOREGROUND_DELTA).sum())
    assert perceptual_quality(Image.fromarray(arr), w, 48) == 10.0
    arr[w.cell * 2 : w.cell * 2 + 2, w.cell * 2 : w.cell * 2 + 2] = (0, 0, 0)  # 4 stray pixels, too few to be an object
    pq = perceptual_quality(Image.fromarray(arr), w, 48)
    assert math.isclose(pq, 10.0 * n_obj / (n_obj + 4))
    assert perceptual_quality(_blank(cfg), w, 48) == 0.0


# ----------------------------------------------------------------------------- understanding


def test_vqa_exact_match_normalisation_and_half(sets):
    m = load("understanding", "vqa")
    items = sets["vqa"]
    refs, qs = [i["answer"] for i in items], [i["question"] for i in items]
    assert m.compute(predictions=refs, references=refs, questions=qs)["vqa_accuracy"] == 1.0
    assert m.compute(predictions=[""] * len(refs), references=refs, questions=qs)["vqa_accuracy"] == 0.0
    half = m.compute(predictions=_half(refs, lambda a: a, lambda a: ""), references=refs, questions=qs)
    assert half["vqa_accuracy"] == _even_share(refs)
    spelled = m.compute(predictions=["Three.", "3", "the Circle", "yes!"], references=["three", "three", "circle", "yes"],
                        questions=["how many shapes are there?"] * 2 + ["what shape is in the center?", "is there a red circle?"])
    assert spelled["vqa_accuracy"] == 1.0 and spelled["vqa_count"] == 1.0


def test_caption_scene_graph_f1(cfg, sets):
    m = load("understanding", "caption")
    items = sets["caption"]
    refs = [as_reference(i["scene"]) for i in items]
    truth = m.compute(predictions=[i["caption"] for i in items], references=refs, grid=cfg.world.grid)
    assert truth["caption_f1"] == 1.0 and truth["caption_exact"] == 1.0
    assert m.compute(predictions=[""] * len(items), references=refs, grid=cfg.world.grid)["caption_f1"] == 0.0
    half = m.compute(predictions=_half(items, lambda i: i["caption"], lambda i: ""), references=refs, grid=cfg.world.grid)
    assert half["caption_f1"] == _even_share(items)
    scene = Scene.of([ShapeObject(0, 0, "circle", "red", "large"), ShapeObject(1, 1, "square", "blue", "small")])
    one = m.compute(predictions=["a large red circle in the top left and a small green square in the center"],
                    references=[as_reference(scene.to_json())], grid=3)
    assert one["caption_precision"] == 0.5 and one["caption_recall"] == 0.5 and one["caption_f1"] == 0.5
    partial = m.compute(predictions=["a large red circle in the top left"], references=[as_reference(scene.to_json())], grid=3)
    assert math.isclose(partial["caption_f1"], 2 / 3)


# ----------------------------------------------------------------------------- fmnist


@pytest.fixture(scope="module")
def judge(cfg, tmp_path_factory):
    from arm.eval.fmnist import load_or_train

    fcfg = cfg.eval.fmnist.model_copy(update={"cache_dir": str(tmp_path_factory.mktemp("judge"))})
    return load_or_train(fcfg)


def test_fmnist_judge_is_deterministic_and_useful(cfg, judge, tmp_path):
    from arm.eval.fmnist import load_or_train, train_judge

    assert judge.test_accuracy > 0.6  # micro: logistic regression on 2,000 images
    again = train_judge(cfg.eval.fmnist.model_copy(update={"cache_dir": str(tmp_path)}))
    assert again.test_accuracy == judge.test_accuracy
    cached = load_or_train(cfg.eval.fmnist.model_copy(update={"cache_dir": str(tmp_path)}))
    assert cached.test_accuracy == judge.test_accuracy


def test_fmnist_generation_truth_blank_half(cfg, sets, judge):
    from arm.eval.fmnist import load_split
    from arm.eval.images import fmnist_images

    m = load("fmnist", "generation")
    pixels, _ = load_split(cfg.eval.fmnist.root, "t10k")
    images = fmnist_images(pixels, [i["t10k_index"] for i in sets["fmnist_gen"]])
    # RGB at the tokenizer's size, as a model emits them: the judge must read them the same way
    images = [im.convert("RGB").resize((48, 48), Image.BICUBIC) for im in images]
    read = [int(k) for k in judge.predict(images)]  # references the judge agrees with: a perfect score
    assert m.compute(predictions=images, references=read, judge=judge)["generation_accuracy"] == 1.0
    blank = m.compute(predictions=[_blank(cfg)] * len(read), references=read, judge=judge)
    assert blank == {"generation_accuracy": 0.0, "blank_fraction": 1.0}
    half = m.compute(predictions=_half(images, lambda im: im, lambda im: _blank(cfg)), references=read, judge=judge)
    assert half["generation_accuracy"] == _even_share(images)
    with pytest.raises(ValueError, match="judge"):
        m.compute(predictions=images[:1], references=read[:1])


def test_fmnist_understanding(sets):
    m = load("fmnist", "understanding")
    items = sets["fmnist_und"]
    refs, kinds = [i["answer"] for i in items], [i["kind"] for i in items]
    truth = m.compute(predictions=refs, references=refs, kinds=kinds)
    assert truth["understanding_accuracy"] == 1.0 and truth["vqa_accuracy"] == 1.0
    assert m.compute(predictions=[""] * len(refs), references=refs, kinds=kinds)["vqa_accuracy"] == 0.0
    # items alternate "what" and a yes/no question: right on every "what" only
    what_only = m.compute(predictions=[r if k == "what" else "" for r, k in zip(refs, kinds)], references=refs, kinds=kinds)
    assert what_only["understanding_accuracy"] == 1.0 and what_only["vqa_accuracy"] == 0.5


# ----------------------------------------------------------------------------- tokenizer


def test_tokenizer_psnr_ssim_and_code_usage():
    m = load("tokenizer")
    rng = np.random.default_rng(0)
    originals = [Image.fromarray(rng.integers(0, 200, (32, 32, 3), dtype=np.uint8)) for _ in range(3)]
    same = m.compute(predictions=originals, references=originals)
    assert same["psnr"] == PSNR_CAP == 100.0 and math.isclose(same["ssim"], 1.0, abs_tol=1e-6)
    shifted = [Image.fromarray((np.asarray(im).astype(np.int16) + 51).astype(np.uint8)) for im in originals]
    res = m.compute(predictions=shifted, references=originals, codes=[[0, 0], [1, 1], [1, 0]], codebook_size=4)
    assert math.isclose(res["psnr"], 10 * math.log10(1 / 0.2**2), rel_tol=1e-5)  # every pixel off by 0.2
    assert res["ssim"] < 1.0
    assert res["code_usage"] == 0.5 and math.isclose(res["code_perplexity"], 2.0)
    with pytest.raises(ValueError, match="outside"):
        m.compute(predictions=originals, references=originals, codes=[[9]], codebook_size=4)


def test_per_object_attributes_show_the_attribute_an_exact_score_hides(cfg):
    """An image that draws every object in its cell with the right kind and size but the wrong
    colour scores 0 exact; the attribute scores say it is colour alone that fails."""
    w = cfg.world
    objs = [ShapeObject(0, 0, "circle", "red", "large"), ShapeObject(1, 2, "square", "blue", "small"),
            ShapeObject(2, 1, "triangle", "green", "large")]
    spec = Scene.of(objs)
    wrong_colour = Scene.of(replace(o, color="yellow") for o in objs)
    half = Scene.of([objs[0]])  # one object drawn right, the others missing
    specs = [{"category": "position", "scene": spec.to_json()}] * 2
    summary, rows = score_geneval([shapes.render(wrong_colour, w), shapes.render(half, w)], specs, w)
    assert summary["exact_scene"] == 0.0
    assert rows[0]["objects"] == 3 and rows[0]["color_hits"] == 0 and rows[0]["kind_hits"] == 3
    assert summary["object_cell"] == summary["object_kind"] == summary["object_size"] == 4 / 6
    assert summary["object_color"] == 1 / 6
    # edits: the attributes of the object the instruction puts in place
    source = Scene.of(objs[:2])
    target = Scene.of([objs[0], replace(objs[1], color="green")])
    esum, erows = score_edit([shapes.render(Scene.of([objs[0], replace(objs[1], color="yellow")]), w)],
                             [{"source_scene": source.to_json(), "target_scene": target.to_json(), "op": "recolor"}],
                             w, cfg.eval.pq_tolerance)
    assert esum["object_color"] == 0.0 and esum["object_kind"] == esum["object_size"] == esum["object_cell"] == 1.0
