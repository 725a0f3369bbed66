"""The shapes world with non-square scenes (issue 17 item 1): (rows, cols) shapes from
`world.grids` besides the square, rendered, captioned, edited, parsed back by the oracle and
drawn by the curation source, while square scenes stay exactly what they were."""

from __future__ import annotations

import hashlib
import io
import json
import random

import pytest
from PIL import Image

from arm.config import ArmConfig, ShapesSourceConfig, WorldConfig, shapes_of
from arm.data import holdout, oracle, shapes
from arm.data.shapes import Scene, ShapeObject
from arm.data.sources.shapes import scene_records

SQUARE = WorldConfig()
WORLD = WorldConfig(grids=[[3, 4], [4, 3]])  # 48 px, 16 px cells: 48x48, 48 high x 64 wide, 64 high x 48 wide
BUCKETS = [(3, 4), (4, 3)]


def random_scenes(n: int, seed: int) -> list[Scene]:
    rng = random.Random(seed)
    return [shapes.random_scene(rng, WORLD, grid=BUCKETS[i % 2]) for i in range(n)]


def test_world_lists_its_shapes_square_first_and_validates_them():
    assert shapes_of(SQUARE) == [(3, 3)]
    assert shapes_of(WORLD) == [(3, 3), (3, 4), (4, 3)]
    with pytest.raises(ValueError, match="repeats a shape"):
        WorldConfig(grids=[[3, 3]])
    with pytest.raises(ValueError, match="repeats a shape"):
        WorldConfig(grids=[[3, 4], [3, 4]])
    with pytest.raises(ValueError, match="greater than or equal to 1"):
        WorldConfig(grids=[[0, 4]])
    with pytest.raises(ValueError, match=r"smallest scene shape \(1x2 = 2\)"):
        WorldConfig(grids=[[1, 2]])  # max_objects 3 do not fit
    with pytest.raises(ValueError, match="Extra inputs"):
        WorldConfig(grid_shapes=[[3, 4]])
    # a binding may name a row only some shape has, and none that no shape has
    WorldConfig(grids=[[4, 3]], holdout={"bindings": [{"row": 3, "kind": "circle"}]})
    with pytest.raises(ValueError, match="does not have"):
        WorldConfig(grids=[[3, 4]], holdout={"bindings": [{"row": 3, "kind": "circle"}]})


def test_a_square_only_world_dumps_as_before_so_stored_hashes_hold():
    assert "grids" not in SQUARE.model_dump(mode="json")
    assert WORLD.model_dump(mode="json")["grids"] == [[3, 4], [4, 3]]
    assert WorldConfig.model_validate(WORLD.model_dump(mode="json")) == WORLD


@pytest.mark.parametrize(("grid", "size"), [((3, 4), (64, 48)), ((4, 3), (48, 64)), (None, (48, 48))])
def test_render_is_rows_by_cols_cells(grid, size):
    scene = shapes.random_scene(random.Random(0), WORLD, grid=grid)
    assert shapes.scene_grid(scene, WORLD) == (grid or (3, 3))
    assert shapes.render(scene, WORLD).size == size  # PIL: (width, height)
    assert shapes.render_array(scene, WORLD).shape == (size[1], size[0], 3)


def test_oracle_reads_200_non_square_scenes_exactly():
    scenes = random_scenes(200, seed=1)
    assert [oracle.parse(shapes.render(s, WORLD), WORLD) for s in scenes] == scenes
    cells = oracle.read_cells(shapes.render(scenes[0], WORLD), WORLD)
    assert (len(cells), len(cells[0])) == (3, 4)


def test_oracle_reads_the_square_grid_as_a_plain_scene_and_scaled_images_by_aspect():
    square = shapes.random_scene(random.Random(2), WORLD)
    assert square.grid is None and oracle.parse(shapes.render(square, WORLD), WORLD) == square
    scene = random_scenes(1, seed=3)[0]  # 3x4, read back from a 2x decode
    big = shapes.render(scene, WORLD).resize((128, 96), Image.NEAREST)
    assert oracle.parse(big, WORLD) == scene
    # a square-only world still reads a non-square image at its own cell count
    assert oracle.parse(shapes.render(scene, WORLD), SQUARE) == scene


def test_an_image_of_no_readable_size_is_an_error_naming_it():
    with pytest.raises(ValueError, match="50x70 px"):
        oracle.parse(Image.new("RGB", (50, 70), "white"), WORLD)


def test_json_round_trips_and_keeps_square_scenes_a_list():
    obj = ShapeObject(0, 1, "circle", "red", "small")
    square, wide = Scene.of([obj]), Scene.of([obj], (3, 4))
    assert square.to_json() == [obj.__dict__]
    assert wide.to_json() == {"grid": [3, 4], "objects": [obj.__dict__]}
    for scene in [square, wide, *random_scenes(20, seed=4)]:
        assert Scene.from_json(json.loads(json.dumps(scene.to_json()))) == scene
    with pytest.raises(ValueError, match="keys grid and objects"):
        Scene.from_json({"grid": [3, 4], "items": []})
    # the held-out partition tells them apart; the square key is the plain object list
    assert holdout.scene_key(square) == json.dumps([obj.__dict__], sort_keys=True)
    assert holdout.scene_key(wide) != holdout.scene_key(square)
    assert shapes.random_scene(random.Random(5), WORLD, grid=(3, 3)).grid is None


def test_cell_states_are_row_major_over_the_scene_grid():
    obj = ShapeObject(2, 3, "square", "blue", "large")
    states = shapes.cell_states(Scene.of([obj], (3, 4)), WORLD)
    assert len(states) == 12 and [i for i, s in enumerate(states) if s] == [11]


def test_positions_have_distinct_names_and_the_3x3_names_are_kept():
    assert [shapes.position_name(r, c, 3) for r in range(3) for c in range(3)] == [
        "top left", "top middle", "top right", "middle left", "center", "middle right",
        "bottom left", "bottom middle", "bottom right"]
    assert shapes.position_name(0, 1, 4) == "row 1 column 2"  # 4x4 worlds keep their names
    for rows, cols in BUCKETS:
        names = [shapes.position_name(r, c, rows, cols) for r in range(rows) for c in range(cols)]
        assert len(set(names)) == 12 and not any(n.startswith("row ") for n in names), names
    assert shapes.position_name(0, 1, 3, 4) == "top center-left"
    assert shapes.position_name(3, 2, 4, 3) == "bottom right"


def test_captions_questions_and_edits_use_the_scene_grid():
    rng = random.Random(6)
    for scene in random_scenes(300, seed=7):
        rows, cols = scene.grid
        names = {shapes.position_name(r, c, rows, cols) for r in range(rows) for c in range(cols)}
        text = shapes.caption(scene, WORLD.grid)
        assert all(f"in the {shapes.position_name(o.row, o.col, rows, cols)}" in text for o in scene.objects)
        q, _ = shapes.vqa_pair(rng, scene, WORLD)
        if q.startswith("what shape is in the "):
            assert q[len("what shape is in the "):-1] in names
        instruction, target, op = shapes.random_edit(rng, scene, WORLD)
        assert target.grid == scene.grid, (instruction, op)
        assert all(0 <= o.row < rows and 0 <= o.col < cols for o in target.objects), (instruction, op)
        assert oracle.parse(shapes.render(target, WORLD), WORLD) == target
    for grid in BUCKETS:
        text, scene = shapes.knowledge_prompt(rng, WORLD, grid)
        (o,) = scene.objects
        assert scene.grid == grid and text.endswith(f"in the {shapes.position_name(o.row, o.col, *grid)}")


def square_digest(world: WorldConfig) -> str:
    """Caption, render, questions and edits of fixed-seed square scenes of `world`."""
    h = hashlib.sha256()
    rng = random.Random(8)
    for _ in range(50):
        scene = shapes.random_scene(rng, world)
        h.update(repr((scene.to_json(), shapes.caption(scene, world.grid), shapes.cell_states(scene, world),
                       shapes.vqa_pair(rng, scene, world), shapes.random_edit(rng, scene, world)[0])).encode())
        h.update(shapes.render(scene, world).tobytes())
    return h.hexdigest()


def test_square_outputs_do_not_change_when_a_world_gains_shapes():
    assert square_digest(WorldConfig(grids=[[3, 4]])) == square_digest(SQUARE)


def records_of(world: WorldConfig, n: int) -> list[list]:
    cfg = ArmConfig(world=world)
    src = ShapesSourceConfig(n_scenes=n, seed=0)
    return [scene_records(src, cfg, i) for i in range(n)]


def size_of(png: bytes) -> tuple[int, int]:
    return Image.open(io.BytesIO(png)).size


def test_source_draws_every_shape_with_the_right_image_sizes():
    n = 40
    square_only = records_of(SQUARE, n)
    seen = set()
    for i, recs in enumerate(records_of(WORLD, n)):
        scene = Scene.from_json(recs[0].meta["scene"])
        rows, cols = shapes.scene_grid(scene, WORLD)
        seen.add((rows, cols))
        assert holdout.is_training(scene, WORLD)
        for r in recs:
            for key in ("scene", "target_scene"):
                if key in r.meta:
                    assert Scene.from_json(r.meta[key]).grid == scene.grid
            for png in (r.image, r.source_image):
                if png is not None:
                    assert size_of(png) == (cols * WORLD.cell, rows * WORLD.cell)
        if scene.grid is None:  # a square scene's records are those of the square-only world
            assert [(r.ref, r.image, r.caption, r.question, r.answer, r.instruction, r.meta) for r in recs] == \
                   [(r.ref, r.image, r.caption, r.question, r.answer, r.instruction, r.meta) for r in square_only[i]]
    assert seen == set(shapes_of(WORLD))


def test_judges_read_a_bucket_scene_on_its_own_cells():
    from arm.eval.answers import answer_from_scene
    from arm.eval.checks import edit_check, perceptual_quality

    source = Scene.of([ShapeObject(0, 3, "circle", "red", "large"), ShapeObject(2, 0, "square", "blue", "small")], (3, 4))
    target = source.with_objects([ShapeObject(0, 3, "circle", "green", "large"), source.objects[1]])
    assert answer_from_scene("what shape is in the top right?", source, WORLD.grid) == "circle"
    assert perceptual_quality(shapes.render(source, WORLD), WORLD, tolerance=8) == 10.0
    done = edit_check(source, target, oracle.parse(shapes.render(target, WORLD), WORLD), WORLD.grid)
    assert done["fulfilled"] == 1.0 and done["preservation"] == 1.0
    # the edited cell lies in column 3, which a square 3x3 reading of the scene never looks at
    missed = edit_check(source, target, oracle.parse(shapes.render(source, WORLD), WORLD), WORLD.grid)
    assert missed["fulfilled"] == 0.0


def test_the_perfect_tokenizer_refuses_a_bucket_scene_by_name():
    from arm.train.perfect import PerfectTokenizer

    perfect = PerfectTokenizer(WORLD)
    assert perfect.encode_scene(Scene.of([ShapeObject(0, 2, "circle", "red", "small")]))[2] > 0  # square: as ever
    with pytest.raises(ValueError, match=r"a 3x4 scene: the perfect tokenizer .* pretrain.images: tokenizer"):
        perfect.encode_scene(random_scenes(1, 0)[0])
