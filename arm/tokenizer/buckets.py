"""Aspect-ratio buckets of the visual tokenizer (issue 17): which token grid an image is encoded on.

A tokenizer has a list of (h, w) token grids, the square default first. Each grid is the one of
about a token budget (`tokenizer.aspect.max_tokens`) whose shape is nearest a configured
width:height ratio; an image goes to the grid nearest its own aspect ratio and is brought to
that grid's pixel size by cropping or padding, never by squashing its content.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache

from PIL import Image

from arm.data.images import ALPHA_BACKGROUND, resize, to_rgb

# A grid may miss its ratio by up to 5% more than the closest grid within the budget does, to
# spend more of the budget: 4:3 at 576 tokens is 21x27 (567 tokens, 1.29) rather than the exact
# but smaller 18x24 (432). Cropping to the grid's own shape keeps the pixels undistorted anyway.
RATIO_SLACK = math.log(1.05)
FITS = ("crop", "pad")
_EPS = 1e-9  # float slack on log errors: a grid exactly at the tolerance counts as within it

Grid = tuple[int, int]


def parse_ratio(text: str) -> float:
    """'W:H' (e.g. '4:3', '1.85:1') -> W / H, or a ValueError naming `text`."""
    if not isinstance(text, str):
        raise ValueError(f"aspect ratio {text!r}: expected a 'width:height' string such as '4:3'")
    parts = text.split(":")
    if len(parts) != 2:
        raise ValueError(f"aspect ratio {text!r}: expected 'width:height' such as '4:3'")
    try:
        w, h = float(parts[0]), float(parts[1])
    except ValueError:
        raise ValueError(f"aspect ratio {text!r}: width and height must be numbers, as in '4:3'") from None
    if not (math.isfinite(w) and math.isfinite(h) and w > 0 and h > 0):
        raise ValueError(f"aspect ratio {text!r}: width and height must be positive and finite")
    return w / h


def _ratio(value: str | float) -> float:
    if isinstance(value, str):
        return parse_ratio(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"aspect ratio {value!r}: expected 'width:height' or a positive width/height number")
    return float(value)


def _error(h: int, w: int, log_ratio: float) -> float:
    # logs of the sides rather than of their quotient: 3x4 and 4x3 are then exactly as far from 1:1
    return abs(math.log(w) - math.log(h) - log_ratio)


@lru_cache(maxsize=256)  # a config asks for its grids more than once; the search is O(budget log budget)
def grid_for_ratio(ratio: float, max_tokens: int) -> Grid:
    """The (h, w) of at most `max_tokens` cells nearest `ratio` = w/h in log space, or within
    RATIO_SLACK of the nearest with the most cells (ties: the nearer, then the shorter)."""
    target = math.log(ratio)
    shapes = [(h, w) for h in range(1, max_tokens + 1) for w in range(1, max_tokens // h + 1)]
    best = min(_error(h, w, target) for h, w in shapes)
    near = [(h, w) for h, w in shapes if _error(h, w, target) <= best + RATIO_SLACK + _EPS]
    return max(near, key=lambda g: (g[0] * g[1], -_error(*g, target), -g[0]))


def bucket_grids(ratios: Sequence[str], max_tokens: int | None, square_side: int) -> list[Grid]:
    """The token grid of each ratio, deduplicated, in the order given with the square first.

    `max_tokens` None is the square's area; the budget must keep the 1:1 grid at the square
    `square_side` x `square_side` (side^2 <= max_tokens < (side+1)^2), since that grid is the
    tokenizer's default, the one its image_size and patch_size describe."""
    budget = square_side * square_side if max_tokens is None else int(max_tokens)
    if not square_side * square_side <= budget < (square_side + 1) ** 2:
        raise ValueError(f"max_tokens {max_tokens}: the 1:1 grid must stay the square {square_side}x{square_side} "
                         f"(image_size / patch_size), so it must lie in [{square_side ** 2}, {(square_side + 1) ** 2 - 1}]")
    values = [parse_ratio(r) for r in ratios]
    if 1.0 not in values:
        raise ValueError(f"ratios {list(ratios)}: need '1:1' (the square default grid)")
    grids = [(square_side, square_side)]
    for value in values:
        # 1:1 is the square itself: a budget above side^2 would otherwise buy a side x side+1 grid
        g = (square_side, square_side) if value == 1.0 else grid_for_ratio(value, budget)
        if g not in grids:
            grids.append(g)
    return grids


class Buckets:
    """The grids of a tokenizer, with `patch` pixels per token side and how images are fitted."""

    def __init__(self, grids: Sequence[Sequence[int]], patch: int, fit: str = "crop"):
        self.grids: list[Grid] = [(int(h), int(w)) for h, w in grids]
        if not self.grids or any(h < 1 or w < 1 for h, w in self.grids):
            raise ValueError(f"grids {grids}: need at least one (h, w) grid of positive sides")
        if fit not in FITS:
            raise ValueError(f"fit {fit!r}: expected one of {FITS}")
        self.patch, self.fit_mode = int(patch), fit

    def __repr__(self) -> str:
        return f"Buckets({self.grids}, patch={self.patch}, fit={self.fit_mode!r})"

    def check(self, grid: Sequence[int]) -> Grid:
        """`grid` as a tuple, or a ValueError naming it and the known grids."""
        g = tuple(int(v) for v in grid)
        if g not in self.grids:
            raise ValueError(f"grid {g}: not a grid of this tokenizer; known (h, w) grids: {self.grids}")
        return g  # type: ignore[return-value]

    def _nearest(self, log_ratio: float) -> Grid:
        # min() keeps the first of equal errors: ties go to the earlier bucket
        return min(self.grids, key=lambda g: _error(g[0], g[1], log_ratio))

    def choose(self, width_px: int, height_px: int) -> Grid:
        """The grid nearest an image's own aspect ratio (log space; ties: the earlier grid)."""
        if width_px < 1 or height_px < 1:
            raise ValueError(f"image size {width_px}x{height_px}: width and height must be positive")
        return self._nearest(math.log(width_px) - math.log(height_px))

    def for_ratio(self, ratio: str | float) -> Grid:
        """The grid nearest a requested 'W:H' ratio (or width/height number)."""
        return self._nearest(math.log(_ratio(ratio)))

    def pixel_size(self, grid: Sequence[int]) -> tuple[int, int]:
        """(height, width) in pixels of a grid."""
        h, w = self.check(grid)
        return h * self.patch, w * self.patch

    def fit(self, image: Image.Image, grid: Sequence[int]) -> Image.Image:
        """`image` as upright RGB of exactly the grid's pixel size: resized to cover it and
        centre-cropped (`crop`), or resized to fit inside it and centred on white (`pad`)."""
        height, width = self.pixel_size(grid)
        rgb = to_rgb(image)
        w0, h0 = rgb.size
        if self.fit_mode == "crop":
            # the largest centred box of the grid's shape, cut before the resize (one resample)
            if w0 * height > width * h0:
                cw, ch = max(1, round(h0 * width / height)), h0
            else:
                cw, ch = w0, max(1, round(w0 * height / width))
            left, top = (w0 - cw) // 2, (h0 - ch) // 2
            box = rgb if (cw, ch) == (w0, h0) else rgb.crop((left, top, left + cw, top + ch))
            return resize(box, (width, height))
        scale = min(width / w0, height / h0)
        inner = (min(width, max(1, round(w0 * scale))), min(height, max(1, round(h0 * scale))))
        canvas = Image.new("RGB", (width, height), ALPHA_BACKGROUND)
        canvas.paste(resize(rgb, inner), ((width - inner[0]) // 2, (height - inner[1]) // 2))
        return canvas
