"""The independent scene judge (arm/eval/judge.py): reads the project's renders, says "unknown"
to what it cannot read, caches its training, and shares no code with the oracle or renderer."""

from __future__ import annotations

import ast
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from arm.config import PALETTE, WorldConfig
from arm.data.shapes import Scene, ShapeObject, random_scene, render
from arm.eval import judge as judge_mod
from arm.eval.judge import UNKNOWN, SceneJudgeConfig, cache_folder, load_or_train, train_judge

WORLD = WorldConfig()  # the tiny world: 48 px, 3x3 grid, 16 px cells
# Reduced from the defaults to keep the suite short; still enough to read renders exactly.
CFG = dict(train_images=4000, epochs=3, holdout_images=200)


@pytest.fixture(scope="module")
def cfg(tmp_path_factory) -> SceneJudgeConfig:
    return SceneJudgeConfig(cache_dir=str(tmp_path_factory.mktemp("judge")), **CFG)


@pytest.fixture(scope="module")
def judge(cfg):
    return load_or_train(cfg, WORLD)


def _cells(scene: Scene) -> list[ShapeObject | None]:
    return [scene.at(r, c) for r in range(WORLD.grid) for c in range(WORLD.grid)]


def test_reads_the_renderers_images(judge):
    rng = random.Random(123)
    scenes = [random_scene(rng, WORLD) for _ in range(100)]
    got = judge.read([render(s, WORLD) for s in scenes])
    assert np.mean([g == s for g, s in zip(got, scenes)]) >= 0.9
    pairs = [(g, s) for gs, ss in zip(got, scenes) for g, s in zip(_cells(gs), _cells(ss))]
    assert np.mean([(g is None) == (s is None) for g, s in pairs]) >= 0.99
    both = [(g, s) for g, s in pairs if g is not None and s is not None]
    for attr in ("kind", "color", "size"):
        assert np.mean([getattr(g, attr) == getattr(s, attr) for g, s in both]) >= 0.97, attr


def _recoloured(obj: ShapeObject, rgb: tuple[int, int, int]) -> Image.Image:
    """A render of one object whose palette colour is replaced by `rgb`, pixel for pixel."""
    arr = np.asarray(render(Scene.of([obj]), WORLD)).copy()
    arr[(arr == PALETTE[obj.color]).all(-1)] = rgb
    return Image.fromarray(arr)


@pytest.mark.parametrize("colour", ["purple", "orange", "gray", "cyan", "black"])
def test_off_palette_colours_read_unknown(judge, colour):
    rgb = (0, 0, 0) if colour == "black" else PALETTE[colour]
    assert colour not in WORLD.colors
    objs = [ShapeObject(r, c, k, "red", s) for r in range(WORLD.grid) for c in range(WORLD.grid)
            for k in WORLD.kinds for s in WORLD.sizes]
    got = judge.read([_recoloured(o, rgb) for o in objs])
    assert all(len(g.objects) == 1 for g in got)  # seen, in the right cell
    assert [(g.objects[0].row, g.objects[0].col) for g in got] == [(o.row, o.col) for o in objs]
    unknown = np.mean([g.objects[0].color == UNKNOWN for g in got])
    assert unknown >= 0.85, f"{colour}: only {unknown:.2f} read as unknown"


def test_blank_reads_empty_and_noise_reads_no_valid_object(judge):
    blank = Image.new("RGB", (WORLD.image_size,) * 2, tuple(WORLD.background))
    assert judge.read([blank]) == [Scene(())]
    rng = np.random.default_rng(0)
    side = WORLD.image_size
    noise = [Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)) for _ in range(10)]
    noise += [Image.fromarray(np.clip(rng.normal(128, 50, (side, side, 3)), 0, 255).astype(np.uint8))
              for _ in range(10)]
    cells = WORLD.grid ** 2
    for scene in judge.read(noise):
        valid = [o for o in scene.objects if o.kind != UNKNOWN and o.color != UNKNOWN]
        assert len(valid) <= cells // 4, scene


def test_resizes_any_image_to_the_world(judge):
    scene = Scene.of([ShapeObject(0, 2, "circle", "blue", "large"), ShapeObject(2, 0, "square", "red", "small")])
    big = render(scene, WORLD).resize((96, 96), Image.NEAREST)
    assert judge.read([big]) == [scene]
    assert judge.read([]) == []


def test_report_is_measured_on_held_out_sets_and_cached(judge, cfg):
    report = judge.report
    assert set(report) >= {"clean", "noise", "blur", "off_palette", "half_drawn", "malformed"}
    assert report["clean"]["exact_scene"] >= 0.9
    assert report["noise"]["presence"] >= 0.95 and report["blur"]["presence"] >= 0.95
    assert report["off_palette"]["color"] >= 0.6  # labelled unknown, so right = read as unknown
    assert report["half_drawn"]["kind"] >= 0.6
    meta = (cache_folder(cfg, WORLD) / "meta.json").read_text()
    assert '"exact_scene"' in meta and '"off_palette"' in meta


def test_second_load_reuses_the_cache(judge, cfg, monkeypatch):
    weights = cache_folder(cfg, WORLD) / "model.safetensors"
    stamp = weights.stat().st_mtime_ns

    def no_training(*_):
        raise AssertionError("trained again despite a cached judge")

    monkeypatch.setattr(judge_mod, "train_judge", no_training)
    again = load_or_train(cfg, WORLD)
    assert weights.stat().st_mtime_ns == stamp
    assert again.report == judge.report
    for (k, a), b in zip(judge.model.state_dict().items(), again.model.state_dict().values()):
        assert torch.equal(a, b), k
    other = cfg.model_copy(update={"seed": 1})
    assert cache_folder(other, WORLD) != cache_folder(cfg, WORLD)
    assert cache_folder(cfg, WORLD.model_copy(update={"colors": ["red", "green"]})) != cache_folder(cfg, WORLD)


def test_training_is_deterministic(tmp_path):
    small = SceneJudgeConfig(cache_dir=str(tmp_path), train_images=64, epochs=1, holdout_images=16)
    a, b = train_judge(small, WORLD), train_judge(small, WORLD)
    for (k, x), y in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.equal(x, y), k
    drop = {"train_seconds"}
    assert {k: v for k, v in a.report.items() if k not in drop} == {k: v for k, v in b.report.items() if k not in drop}


def test_judge_shares_no_code_with_oracle_or_renderer():
    """Independence is the point of this judge: it may use the world's config and the scene
    data classes, never the oracle's parser or the renderer's drawing."""
    tree = ast.parse(Path(judge_mod.__file__).read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
            assert not any(n.startswith(("arm.data.oracle", "arm.data.shapes")) for n in names), names
        elif isinstance(node, ast.ImportFrom):
            mod, names = node.module or "", {a.name for a in node.names}
            assert not mod.startswith("arm.data.oracle"), mod
            if mod == "arm.data":
                assert not names & {"oracle", "shapes"}, names
            if mod == "arm.data.shapes":
                assert names <= {"Scene", "ShapeObject"}, names
            if mod.startswith("arm.") and mod != "arm.data.shapes":
                assert mod in {"arm.config", "arm.eval.config", "arm.io", "arm.progress"}, mod
        elif isinstance(node, ast.Attribute):
            assert node.attr not in {"render", "render_array", "parse", "read_cells"}, ast.unparse(node)


def test_reads_bucket_scenes_on_their_own_cells(judge):
    """A world with 3x4 and 4x3 scenes (aspect buckets): the per-cell reader needs no retraining,
    reads each image on its own rows x cols, at the world's cell size or scaled."""
    from arm.eval.judge import SceneJudge

    world = WorldConfig(grids=[[3, 4], [4, 3]])
    wide = SceneJudge(judge.model, world, judge.min_confidence, judge.report)
    rng = random.Random(7)
    scenes = [random_scene(rng, world, grid=g) for g in [(3, 4), (4, 3)] * 50]
    got = wide.read([render(s, world) for s in scenes])
    assert [g.grid for g in got] == [s.grid for s in scenes]
    assert np.mean([g == s for g, s in zip(got, scenes)]) >= 0.9
    big = render(scenes[0], world).resize((256, 192), Image.NEAREST)  # a 4:3 decode at 4x the cell size
    assert wide.read([big])[0] == got[0]
    with pytest.raises(ValueError, match=r"image of 100x40 px: no scene shape"):
        wide.read([Image.new("RGB", (100, 40), "white")])
