"""The shapes oracle: parses any image (ground truth, reconstruction or sample) into a scene.

Each grid cell is classified on its own from cheap geometric statistics of the pixels that
differ from the background: pixel count (empty or not), bounding-box extent (size), fill ratio
of the bounding box (square ~1.0, circle ~0.8, triangle ~0.5) and the median colour (nearest
palette entry). Thresholds sit halfway between the values the renderer produces, so the oracle
is exact on renders and degrades gracefully on blurry reconstructions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from arm.config import PALETTE, SIZES, WorldConfig
from arm.data.shapes import Scene, ShapeObject

FOREGROUND_DELTA = 60  # max channel distance from the background that counts as ink
SQUARE_MIN_FILL = 0.88
TRIANGLE_MAX_FILL = 0.63
_TYPICAL_FILL = {"square": 1.0, "circle": 0.76, "triangle": 0.51}


@dataclass(frozen=True)
class CellReading:
    ink: int  # foreground pixels
    extent: int  # max bounding-box side
    fill: float  # ink / bounding-box area
    rgb: tuple[int, int, int]


def to_array(image: Image.Image | np.ndarray, cfg: WorldConfig) -> np.ndarray:
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image.astype(np.uint8))
    image = image.convert("RGB")
    if image.size != (cfg.image_size, cfg.image_size):
        image = image.resize((cfg.image_size, cfg.image_size), Image.BILINEAR)
    return np.asarray(image, dtype=np.int16)


def read_cells(image: Image.Image | np.ndarray, cfg: WorldConfig) -> list[list[CellReading | None]]:
    arr = to_array(image, cfg)
    ink = np.abs(arr - np.asarray(cfg.background, dtype=np.int16)).max(axis=2) > FOREGROUND_DELTA
    c = cfg.cell
    small_side = max(3, round(SIZES["small"] * c))
    min_ink = max(2, int(0.3 * small_side * small_side))
    grid: list[list[CellReading | None]] = []
    for r in range(cfg.grid):
        row: list[CellReading | None] = []
        for k in range(cfg.grid):
            mask = ink[r * c : (r + 1) * c, k * c : (k + 1) * c]
            n = int(mask.sum())
            if n < min_ink:
                row.append(None)
                continue
            ys, xs = np.nonzero(mask)
            h, w = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
            pix = arr[r * c : (r + 1) * c, k * c : (k + 1) * c][mask]
            rgb = tuple(int(v) for v in np.median(pix, axis=0))
            row.append(CellReading(n, int(max(h, w)), n / float(h * w), rgb))
        grid.append(row)
    return grid


def nearest_color(rgb: tuple[int, int, int], colors: list[str]) -> str:
    v = np.asarray(rgb, dtype=np.float32)
    return min(colors, key=lambda name: float(((np.asarray(PALETTE[name]) - v) ** 2).sum()))


def classify_kind(fill: float) -> str:
    if fill >= SQUARE_MIN_FILL:
        return "square"
    if fill <= TRIANGLE_MAX_FILL:
        return "triangle"
    return "circle"


def parse(image: Image.Image | np.ndarray, cfg: WorldConfig) -> Scene:
    c = cfg.cell
    sides = {name: max(3, round(frac * c)) for name, frac in SIZES.items() if name in cfg.sizes}
    objects = []
    for r, row in enumerate(read_cells(image, cfg)):
        for k, cell in enumerate(row):
            if cell is None:
                continue
            size = min(sides, key=lambda s: abs(sides[s] - cell.extent))
            kind = classify_kind(cell.fill)
            if kind not in cfg.kinds:
                kind = min(cfg.kinds, key=lambda name: abs(_TYPICAL_FILL[name] - cell.fill))
            objects.append(ShapeObject(r, k, kind, nearest_color(cell.rgb, cfg.colors), size))
    return Scene.of(objects)

