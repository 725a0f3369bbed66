"""The shapes oracle: parses any image (ground truth, reconstruction or sample) into a scene.

Each grid cell is classified on its own from cheap geometric statistics of the pixels that
differ from the background: pixel count (empty or not), bounding-box extent (size), fill ratio
of the bounding box (square ~1.0, circle ~0.8, triangle ~0.5) and the median colour. Thresholds
sit halfway between the values the renderer produces, so the oracle is exact on renders and
tolerates clean reconstructions.

An image's scene shape comes from its size (`image_grid`): a non-square image is read as
rows x cols cells of the world's cell size, and a square one at another scale (a large
tokenizer's decode) is scaled to the world's square image, as it always was.

It is also strict: a judge that guesses the nearest class rewards images it cannot read. So an
attribute it cannot read with confidence is `UNKNOWN`, and a scene holding an unknown object
equals no spec scene:
* colour: the nearest palette colour only within half its distance to any other palette colour
  (and only if the world uses it): black, purple in a red/green/blue/yellow world, or a washed
  out blur are unknown;
* kind: the cell's ink must be a well-formed object of the kind its fill suggests: its overlap
  (IoU) with the ideal shape of that kind at the measured extent at least `MIN_SHAPE_IOU`, its
  centre near the cell centre, and no ink where no render of this world ever draws (the cell's
  margin). Blobs, half-drawn shapes and ink spilling across cells are unknown.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
from PIL import Image

from arm.config import PALETTE, SIZES, WorldConfig, shapes_of
from arm.data.shapes import Scene, ShapeObject, canonical_grid

FOREGROUND_DELTA = 60  # max channel distance from the background that counts as ink
SQUARE_MIN_FILL = 0.88
TRIANGLE_MAX_FILL = 0.63
UNKNOWN = "unknown"  # an attribute the oracle cannot read; no scene the world makes uses it
# A colour reads as palette colour P only within this share of the RGB distance from P to its
# nearest other palette colour: 0.5 splits every pair halfway (the tightest cap, yellow/orange,
# is ~36), and anything farther from every palette colour is unknown.
COLOR_CAP_SHARE = 0.5
# A clean render has IoU 1 with its ideal shape (0.8 for the tiniest triangles, in 8 px cells),
# and renders saved as JPEG quality 50 (no chroma subsampling) stay above 0.74; a shape cut in
# half scores ~0.5, and about 1 in 100 random 5-8-gons drawn in a cell reaches 0.7.
MIN_SHAPE_IOU = 0.7
MAX_OFFSET = 0.15  # the ink's bounding-box centre may sit this share of a cell from its centre
MAX_MARGIN_INK = 0.1  # share of the ink that may lie in the margin no render of the world inks


@dataclass(frozen=True)
class CellReading:
    ink: int  # foreground pixels
    extent: int  # max bounding-box side
    fill: float  # ink / bounding-box area
    rgb: tuple[int, int, int]  # median colour of the ink
    offset: float  # bounding-box centre's distance from the cell centre (larger axis), pixels
    margin_ink: int  # ink outside the box the world's largest object fills
    # the ink in a square of side `extent` + 2 centred on the bounding box (what shape_iou compares)
    window: np.ndarray = field(compare=False, repr=False)


def image_grid(width: int, height: int, cfg: WorldConfig) -> tuple[int, int]:
    """The (rows, cols) of cells an image of this size shows, in order of preference:
    1. exactly one of the world's scene shapes at its cell size;
    2. one of them at another scale, by aspect ratio (the first in `shapes_of` order): a 384 px
       decode of a 48 px world is the square scene, scaled (what the oracle always did);
    3. any other multiple of the cell, read as it is (a shape the world does not draw).
    """
    c = cfg.cell
    cells = (height // c, width // c) if height % c == 0 and width % c == 0 else None
    shapes = shapes_of(cfg)
    if cells in shapes:
        return cells
    for rows, cols in shapes:
        if height * cols == width * rows:
            return rows, cols
    if cells is not None and min(cells) >= 1:
        return cells
    raise ValueError(f"image of {width}x{height} px (width x height) is neither a multiple of the world's "
                     f"{c} px cell nor the aspect of one of its (rows, cols) shapes {shapes}")


def to_array(image: Image.Image | np.ndarray, cfg: WorldConfig) -> np.ndarray:
    """[rows*cell, cols*cell, 3] int16 pixels of the image, scaled to the world's cell if needed."""
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image.astype(np.uint8))
    image = image.convert("RGB")
    rows, cols = image_grid(*image.size, cfg)
    if image.size != (cols * cfg.cell, rows * cfg.cell):
        image = image.resize((cols * cfg.cell, rows * cfg.cell), Image.BILINEAR)
    return np.asarray(image, dtype=np.int16)


def object_side(size: str, cell: int) -> int:
    """The renderer's side in pixels of an object of `size` in a cell of `cell` pixels."""
    return max(3, round(SIZES[size] * cell))


def _object_box(cfg: WorldConfig) -> np.ndarray:
    """True where the world's largest object lies in a cell (renders centre it, rounding down)."""
    c = cfg.cell
    side = max(object_side(s, c) for s in cfg.sizes)
    lo = (c - side) // 2
    box = np.zeros((c, c), bool)
    box[lo : lo + side, lo : lo + side] = True
    return box


def _square_window(mask: np.ndarray, top: int, left: int, side: int) -> np.ndarray:
    """mask[top:top+side, left:left+side], reading background where it reaches past the cell."""
    out = np.zeros((side, side), bool)
    y0, x0 = max(top, 0), max(left, 0)
    y1, x1 = min(top + side, mask.shape[0]), min(left + side, mask.shape[1])
    out[y0 - top : y1 - top, x0 - left : x1 - left] = mask[y0:y1, x0:x1]
    return out


def _read_cell(mask: np.ndarray, pixels: np.ndarray, object_box: np.ndarray) -> CellReading:
    c = mask.shape[0]
    ys, xs = np.nonzero(mask)
    y0, y1, x0, x1 = ys.min(), ys.max(), xs.min(), xs.max()
    h, w = y1 - y0 + 1, x1 - x0 + 1
    extent = int(max(h, w))
    centre = (c - 1) / 2
    offset = float(max(abs((y0 + y1) / 2 - centre), abs((x0 + x1) / 2 - centre)))
    window = _square_window(mask, y0 - (extent - h) // 2 - 1, x0 - (extent - w) // 2 - 1, extent + 2)
    n = int(mask.sum())
    rgb = tuple(int(v) for v in np.median(pixels[mask], axis=0))
    return CellReading(n, extent, n / float(h * w), rgb, offset, int((mask & ~object_box).sum()), window)


def read_cells(image: Image.Image | np.ndarray, cfg: WorldConfig) -> list[list[CellReading | None]]:
    """rows x cols readings (None: an empty cell), the shape the image's size gives (`image_grid`)."""
    arr = to_array(image, cfg)
    ink = np.abs(arr - np.asarray(cfg.background, dtype=np.int16)).max(axis=2) > FOREGROUND_DELTA
    c = cfg.cell
    small_side = object_side("small", c)
    min_ink = max(2, int(0.3 * small_side * small_side))
    box = _object_box(cfg)
    grid: list[list[CellReading | None]] = []
    for r in range(arr.shape[0] // c):
        row: list[CellReading | None] = []
        for k in range(arr.shape[1] // c):
            mask = ink[r * c : (r + 1) * c, k * c : (k + 1) * c]
            if int(mask.sum()) < min_ink:
                row.append(None)
                continue
            row.append(_read_cell(mask, arr[r * c : (r + 1) * c, k * c : (k + 1) * c], box))
        grid.append(row)
    return grid


@lru_cache(maxsize=None)
def _color_caps() -> dict[str, float]:
    """Each palette colour's cap: COLOR_CAP_SHARE of its RGB distance to the nearest other one."""
    rgb = {name: np.asarray(v, dtype=np.float64) for name, v in PALETTE.items()}
    return {
        name: COLOR_CAP_SHARE * min(float(np.linalg.norm(v - u)) for other, u in rgb.items() if other != name)
        for name, v in rgb.items()
    }


def read_color(rgb: tuple[int, int, int], colors: list[str]) -> str:
    """The world colour `rgb` lies within the cap of, else UNKNOWN (caps never overlap)."""
    v = np.asarray(rgb, dtype=np.float64)
    caps = _color_caps()
    for name in colors:
        if float(np.linalg.norm(np.asarray(PALETTE[name], dtype=np.float64) - v)) <= caps[name]:
            return name
    return UNKNOWN


def classify_kind(fill: float) -> str:
    """The kind whose typical fill ratio is nearest (the renderer's values split halfway)."""
    if fill >= SQUARE_MIN_FILL:
        return "square"
    if fill <= TRIANGLE_MAX_FILL:
        return "triangle"
    return "circle"


@lru_cache(maxsize=256)
def ideal_mask(kind: str, side: int) -> np.ndarray:
    """A clean `kind` of `side` pixels, by this module's own geometry (pixel centres inside the
    shape): it matches the renderer's aliased drawing, yet shares no code with it."""
    y, x = np.mgrid[0:side, 0:side].astype(np.float64)
    mid = (side - 1) / 2
    if kind == "square":
        return np.ones((side, side), bool)
    if kind == "circle":
        # the radius that reproduces PIL's aliased ellipse at every side the world uses
        return (x - mid) ** 2 + (y - mid) ** 2 <= (mid + 0.35) ** 2
    if kind == "triangle":  # apex at the top centre, base along the bottom row
        return np.abs(x - mid) <= y / 2 + 1e-6
    raise ValueError(f"no ideal shape for kind {kind!r}")


def shape_iou(cell: CellReading, kind: str) -> float:
    """IoU of the cell's ink with the ideal `kind` at the measured extent, at the best placement
    within a pixel of the bounding box's centre (a faint apex or edge pixel lost to noise shrinks
    the box and would otherwise shift the comparison)."""
    ideal = ideal_mask(kind, cell.extent)
    area = int(ideal.sum())
    if area == cell.ink == int((cell.window[1:-1, 1:-1] & ideal).sum()):
        return 1.0  # exactly the ideal shape (any clean render): no placement does better
    placements = np.lib.stride_tricks.sliding_window_view(cell.window, ideal.shape)  # [3, 3, side, side]
    best = int((placements & ideal).sum(axis=(2, 3)).max())
    # all of the cell's ink lies in the window, so the union is ink + ideal - intersection
    return best / float(cell.ink + area - best)


def read_kind(cell: CellReading, cfg: WorldConfig) -> str:
    """The kind the fill ratio suggests if the ink is a well-formed object of it, else UNKNOWN."""
    if cell.offset > MAX_OFFSET * cfg.cell or cell.margin_ink > MAX_MARGIN_INK * cell.ink:
        return UNKNOWN  # off-centre, or spilling where no object of this world is drawn
    kind = classify_kind(cell.fill)
    if kind not in cfg.kinds or shape_iou(cell, kind) < MIN_SHAPE_IOU:
        return UNKNOWN
    return kind


def is_known(o: ShapeObject) -> bool:
    return UNKNOWN not in (o.kind, o.color)


def parse(image: Image.Image | np.ndarray, cfg: WorldConfig) -> Scene:
    """The scene the image shows, on the grid its size gives (`image_grid`); cells the oracle
    cannot read hold objects with UNKNOWN attributes."""
    sides = {name: object_side(name, cfg.cell) for name in cfg.sizes}
    cells = read_cells(image, cfg)
    objects = []
    for r, row in enumerate(cells):
        for k, cell in enumerate(row):
            if cell is None:
                continue
            size = min(sides, key=lambda s: abs(sides[s] - cell.extent))
            objects.append(ShapeObject(r, k, read_kind(cell, cfg), read_color(cell.rgb, cfg.colors), size))
    return Scene.of(objects, canonical_grid((len(cells), len(cells[0])), cfg))
