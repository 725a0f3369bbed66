"""The shapes world (DESIGN §5): scenes, rendering, captions, VQA, edits and knowledge prompts.

Objects sit one per grid cell, and the grid is aligned with the visual tokenizer's patch grid,
so one image token can carry one object. Everything is a pure function of (config, seed).

A scene is the world's square grid x grid cells unless it carries its own (rows, cols) shape,
one of `world.grids` (aspect-ratio buckets, issue 17); every function here uses the scene's
own shape, and square scenes come out exactly as they did before shapes existed.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image, ImageDraw

from arm.config import PALETTE, SIZES, WorldConfig, shapes_of

NUMBER_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]

# Knowledge-style (WISE) phrases name an attribute without saying it.
KIND_RIDDLES = {
    "circle": ["shape with no corners", "round shape like a coin"],
    "square": ["shape with four equal sides", "shape like a chessboard tile"],
    "triangle": ["shape with three corners", "shape like a slice of pizza"],
}
COLOR_RIDDLES = {
    "red": ["the colour of a ripe tomato", "the colour of blood"],
    "green": ["the colour of grass", "the colour of a fresh leaf"],
    "blue": ["the colour of a clear sky", "the colour of the deep sea"],
    "yellow": ["the colour of a banana", "the colour of a lemon"],
    "purple": ["the colour of a grape", "the colour of lavender"],
    "orange": ["the colour of a carrot", "the colour of a pumpkin"],
    "cyan": ["the colour of a swimming pool", "the colour of turquoise"],
    "gray": ["the colour of a rain cloud", "the colour of ash"],
}


# The order a caption names an object's attributes in; evaluation prompts always use it.
ATTRIBUTE_ORDER = ("size", "color", "kind")


@dataclass(frozen=True, order=True)
class ShapeObject:
    row: int
    col: int
    kind: str
    color: str
    size: str

    def describe(self, order: tuple[str, ...] = ATTRIBUTE_ORDER) -> str:
        return " ".join(getattr(self, a) for a in order)


@dataclass(frozen=True)
class Scene:
    """Objects on a grid of cells. `grid` is the scene's (rows, cols) when it is not the world's
    square grid (None: the square), so square scenes and their JSON stay as they always were.
    The world-aware constructors here and in the oracle store the world's square as None
    (`canonical_grid`), so equal scenes compare equal."""

    objects: tuple[ShapeObject, ...]
    grid: tuple[int, int] | None = None

    @staticmethod
    def of(objects, grid: tuple[int, int] | None = None) -> "Scene":
        return Scene(tuple(sorted(objects)), None if grid is None else (int(grid[0]), int(grid[1])))

    def with_objects(self, objects) -> "Scene":
        """Other objects on this scene's grid (what an edit makes)."""
        return Scene.of(objects, self.grid)

    def at(self, row: int, col: int) -> ShapeObject | None:
        for o in self.objects:
            if (o.row, o.col) == (row, col):
                return o
        return None

    def to_json(self) -> list[dict] | dict:
        """The object list for a square scene (the form stored data has); a non-square scene is
        {"grid": [rows, cols], "objects": [...]}, so no reader can take it for a square one."""
        objects = [o.__dict__.copy() for o in self.objects]
        return objects if self.grid is None else {"grid": list(self.grid), "objects": objects}

    @staticmethod
    def from_json(data: list[dict] | dict) -> "Scene":
        if isinstance(data, list):
            return Scene.of(ShapeObject(**i) for i in data)
        if set(data) != {"grid", "objects"}:
            raise ValueError(f"a non-square scene's JSON has keys grid and objects, got {sorted(data)}")
        return Scene.of((ShapeObject(**i) for i in data["objects"]), data["grid"])


def canonical_grid(grid: tuple[int, int] | list[int] | None, cfg: WorldConfig) -> tuple[int, int] | None:
    """A scene's `grid` field for shape `grid`: None for the world's square grid."""
    if grid is None or tuple(grid) == (cfg.grid, cfg.grid):
        return None
    rows, cols = grid
    if rows < 1 or cols < 1:
        raise ValueError(f"a scene grid needs at least one row and one column, got {rows}x{cols}")
    return int(rows), int(cols)


def scene_grid(scene: Scene, cfg: WorldConfig) -> tuple[int, int]:
    """The scene's (rows, cols)."""
    return scene.grid or (cfg.grid, cfg.grid)


def random_grid(rng: random.Random, cfg: WorldConfig) -> tuple[int, int] | None:
    """A scene shape drawn uniformly from the world's (None: the square). A square-only world
    draws nothing from `rng`, so its streams are what they were before shapes existed."""
    options = shapes_of(cfg)
    return canonical_grid(rng.choice(options), cfg) if len(options) > 1 else None


def cell_state_count(cfg: WorldConfig) -> int:
    """Distinct contents of a grid cell: empty, or one object of each size x colour x kind."""
    return 1 + len(cfg.sizes) * len(cfg.colors) * len(cfg.kinds)


def cell_states(scene: Scene, cfg: WorldConfig) -> list[int]:
    """Row-major content class of every cell of the scene's own grid: 0 = empty, else 1 + the
    (size, colour, kind) index."""
    rows, cols = scene_grid(scene, cfg)
    states = [0] * (rows * cols)
    for o in scene.objects:
        attrs = (cfg.sizes.index(o.size), cfg.colors.index(o.color), cfg.kinds.index(o.kind))
        states[o.row * cols + o.col] = 1 + (attrs[0] * len(cfg.colors) + attrs[1]) * len(cfg.kinds) + attrs[2]
    return states


# Position words along an axis of 3 or 4 cells: the 3x3 names are the world's originals, and the
# 4-cell words name the cells of 3x4 and 4x3 scenes (aspect buckets) in words as well.
ROW_WORDS = {3: ("top", "middle", "bottom"), 4: ("top", "upper", "lower", "bottom")}
COL_WORDS = {3: ("left", "middle", "right"), 4: ("left", "center-left", "center-right", "right")}


def position_name(row: int, col: int, rows: int, cols: int | None = None) -> str:
    """A cell's name in captions, questions and edits on a rows x cols grid (square when `cols` is
    None): words on 3x3, 3x4 and 4x3 grids, else "row r column c" (as 4x4 worlds always had)."""
    cols = rows if cols is None else cols
    if rows in ROW_WORDS and cols in COL_WORDS and (rows, cols) != (4, 4):
        name = f"{ROW_WORDS[rows][row]} {COL_WORDS[cols][col]}"
        return "center" if name == "middle middle" else name
    return f"row {row + 1} column {col + 1}"


def caption(scene: Scene, grid: int, order_rng: random.Random | None = None) -> str:
    """"a small red circle in the top left and ...", positions named on the scene's own grid
    (`grid` is the world's square side, for scenes without a shape of their own).

    With `order_rng`, each object's attributes come in an order drawn from it: a causal model
    binds an attribute to its object (whose position ends the phrase) later the farther the word
    sits from that end, and answers "what colour is the circle?" only if its captions also name
    the colour after the kind (issue 14's study)."""
    rows, cols = scene.grid or (grid, grid)
    orders = list(itertools.permutations(ATTRIBUTE_ORDER))
    parts = [f"a {o.describe(order_rng.choice(orders) if order_rng else ATTRIBUTE_ORDER)} in the "
             f"{position_name(o.row, o.col, rows, cols)}" for o in scene.objects]
    if not parts:
        return "an empty picture"
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def random_object(rng: random.Random, cfg: WorldConfig, row: int, col: int) -> ShapeObject:
    return ShapeObject(row, col, rng.choice(cfg.kinds), rng.choice(cfg.colors), rng.choice(cfg.sizes))


def random_scene(rng: random.Random, cfg: WorldConfig, n: int | None = None,
                 grid: tuple[int, int] | None = None) -> Scene:
    """A scene of `n` objects (else a random count) on `grid` (rows, cols; None: the square)."""
    grid = canonical_grid(grid, cfg)
    rows, cols = grid or (cfg.grid, cfg.grid)
    n = rng.randint(cfg.min_objects, cfg.max_objects) if n is None else n
    cells = rng.sample([(r, c) for r in range(rows) for c in range(cols)], n)
    return Scene.of((random_object(rng, cfg, r, c) for r, c in cells), grid)


def render(scene: Scene, cfg: WorldConfig) -> Image.Image:
    """rows*cell px high, cols*cell px wide. Aliased drawing on purpose: crisp edges make the
    oracle exact on ground truth."""
    rows, cols = scene_grid(scene, cfg)
    img = Image.new("RGB", (cols * cfg.cell, rows * cfg.cell), tuple(cfg.background))
    draw = ImageDraw.Draw(img)
    cell = cfg.cell
    for o in scene.objects:
        side = max(3, round(SIZES[o.size] * cell))
        x0 = o.col * cell + (cell - side) // 2
        y0 = o.row * cell + (cell - side) // 2
        x1, y1 = x0 + side - 1, y0 + side - 1
        fill = PALETTE[o.color]
        if o.kind == "square":
            draw.rectangle([x0, y0, x1, y1], fill=fill)
        elif o.kind == "circle":
            draw.ellipse([x0, y0, x1, y1], fill=fill)
        else:
            draw.polygon([((x0 + x1) / 2, y0), (x0, y1), (x1, y1)], fill=fill)
    return img


def render_array(scene: Scene, cfg: WorldConfig) -> np.ndarray:
    return np.asarray(render(scene, cfg))


# ----------------------------------------------------------------------------- questions


def exists_question(color: str, kind: str) -> str:
    """The existence question (VQA's "exists" type and the POPE probe)."""
    return f"is there a {color} {kind}?"


def question_attributes(question: str, cfg: WorldConfig) -> dict[str, str]:
    """The object attributes a question states: an existence question names a colour and a kind."""
    for color in cfg.colors:
        for kind in cfg.kinds:
            if question == exists_question(color, kind):
                return {"color": color, "kind": kind}
    return {}


def vqa_pair(rng: random.Random, scene: Scene, cfg: WorldConfig) -> tuple[str, str]:
    """One question with a single-word answer that the scene determines."""
    kinds = [o.kind for o in scene.objects]
    options = ["count", "shape_at", "exists"]
    if any(kinds.count(k) == 1 for k in kinds):
        options += ["color_of", "size_of"]
    q = rng.choice(options)
    if q == "count":
        return "how many shapes are there?", NUMBER_WORDS[len(scene.objects)]
    if q == "shape_at":
        rows, cols = scene_grid(scene, cfg)
        row, col = rng.randrange(rows), rng.randrange(cols)
        if scene.objects and rng.random() < 0.7:
            o = rng.choice(scene.objects)
            row, col = o.row, o.col
        o = scene.at(row, col)
        return f"what shape is in the {position_name(row, col, rows, cols)}?", o.kind if o else "nothing"
    if q == "exists":
        if scene.objects and rng.random() < 0.5:
            o = rng.choice(scene.objects)
            color, kind = o.color, o.kind
        else:
            color, kind = rng.choice(cfg.colors), rng.choice(cfg.kinds)
        present = any(o.color == color and o.kind == kind for o in scene.objects)
        return exists_question(color, kind), "yes" if present else "no"
    unique = [o for o in scene.objects if kinds.count(o.kind) == 1]
    o = rng.choice(unique)
    if q == "color_of":
        return f"what colour is the {o.kind}?", o.color
    return f"what size is the {o.kind}?", o.size


# ----------------------------------------------------------------------------- edits

EDIT_OPS = ("recolor", "move", "add", "remove", "resize")


def random_edit(rng: random.Random, scene: Scene, cfg: WorldConfig) -> tuple[str, Scene, str]:
    """Returns (instruction, target scene, op), the target on the source's grid. Objects are
    referred to by kind and position."""
    rows, cols = scene_grid(scene, cfg)
    empty = [(r, c) for r in range(rows) for c in range(cols) if scene.at(r, c) is None]
    ops = ["recolor", "resize"] if scene.objects else []
    if scene.objects and empty:
        ops.append("move")
    if empty and len(scene.objects) < cfg.max_objects:
        ops.append("add")
    if len(scene.objects) > max(1, cfg.min_objects):
        ops.append("remove")
    if len(cfg.colors) < 2:
        ops = [o for o in ops if o != "recolor"]
    if len(cfg.sizes) < 2:
        ops = [o for o in ops if o != "resize"]
    op = rng.choice(ops)
    rest = list(scene.objects)
    if op == "add":
        r, c = rng.choice(empty)
        new = random_object(rng, cfg, r, c)
        added = scene.with_objects(rest + [new])
        return f"add a {new.describe()} in the {position_name(r, c, rows, cols)}", added, op
    o = rng.choice(scene.objects)
    rest.remove(o)
    ref = f"the {o.kind} in the {position_name(o.row, o.col, rows, cols)}"
    if op == "remove":
        return f"remove {ref}", scene.with_objects(rest), op
    if op == "move":
        r, c = rng.choice(empty)
        moved = scene.with_objects(rest + [replace(o, row=r, col=c)])
        return f"move {ref} to the {position_name(r, c, rows, cols)}", moved, op
    if op == "recolor":
        color = rng.choice([c for c in cfg.colors if c != o.color])
        return f"make {ref} {color}", scene.with_objects(rest + [replace(o, color=color)]), op
    size = rng.choice([s for s in cfg.sizes if s != o.size])
    return f"make {ref} {size}", scene.with_objects(rest + [replace(o, size=size)]), op


# ----------------------------------------------------------------------------- knowledge


def knowledge_prompt(rng: random.Random, cfg: WorldConfig,
                     grid: tuple[int, int] | None = None) -> tuple[str, Scene]:
    """A single-object prompt on `grid` (None: the square) that names kind and colour only
    indirectly (WISE-style)."""
    grid = canonical_grid(grid, cfg)
    rows, cols = grid or (cfg.grid, cfg.grid)
    r, c = rng.randrange(rows), rng.randrange(cols)
    o = random_object(rng, cfg, r, c)
    text = (
        f"a {o.size} {rng.choice(KIND_RIDDLES[o.kind])}, {rng.choice(COLOR_RIDDLES[o.color])},"
        f" in the {position_name(r, c, rows, cols)}"
    )
    return text, Scene.of([o], grid)


def knowledge_facts(cfg: WorldConfig) -> list[str]:
    """Plain-text facts that tie the riddles to the attribute words (the text-only task)."""
    facts = [f"a {riddle} is a {kind}." for kind in cfg.kinds for riddle in KIND_RIDDLES[kind]]
    facts += [f"{riddle} is {color}." for color in cfg.colors for riddle in COLOR_RIDDLES[color]]
    return facts
