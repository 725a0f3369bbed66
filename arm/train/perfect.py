"""A perfect visual tokenizer for the shapes world: one code per grid cell, read off the scene.

It stands in for the learned tokenizer when measuring the AR model alone (DESIGN §5): its codes
lose nothing, so scores with it are the ceiling of what the AR model can reach. Codes follow the
FSQ convention of vector-quantize-pytorch (first level least significant) with levels
(kind + 1, colour + 1, size + 1); digit 0 on every level is the empty cell.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from arm.config import WorldConfig
from arm.data.shapes import Scene, ShapeObject
from arm.tokenizer.geometry import level_digits


class PerfectTokenizer:
    def __init__(self, world: WorldConfig) -> None:
        self.world = world
        self.kinds = list(world.kinds)
        self.colors = list(world.colors)
        self.sizes = list(world.sizes)
        self.levels: tuple[int, ...] = (len(self.kinds) + 1, len(self.colors) + 1, len(self.sizes) + 1)
        self.codebook_size = self.levels[0] * self.levels[1] * self.levels[2]
        self.grid: tuple[int, int] = (world.grid, world.grid)

    def _code(self, o: ShapeObject | None) -> int:
        if o is None:
            return 0
        # An attribute the oracle could not read ("unknown") is digit 0: a cell that names no
        # valid object, which decode_scene counts as invalid and renders empty.
        digit = lambda values, v: values.index(v) + 1 if v in values else 0  # noqa: E731
        k, c, s = digit(self.kinds, o.kind), digit(self.colors, o.color), digit(self.sizes, o.size)
        return k + self.levels[0] * (c + self.levels[1] * s)

    def encode_scene(self, scene: Scene) -> list[int]:
        if scene.grid is not None:
            raise ValueError(f"a {scene.grid[0]}x{scene.grid[1]} scene: the perfect tokenizer (pretrain.images: oracle, "
                             f"the oracle codec) encodes the world's square {self.world.grid}x{self.world.grid} scenes "
                             "only; a world with grids needs pretrain.images: tokenizer (a tokenizer with aspect buckets)")
        g = self.world.grid
        return [self._code(scene.at(r, c)) for r in range(g) for c in range(g)]

    def codes_to_levels(self, codes: torch.Tensor) -> torch.Tensor:
        """Per-level digits, shape [..., len(levels)]."""
        return level_digits(codes, self.levels)

    def decode_scene(self, codes: Sequence[int]) -> tuple[Scene, int]:
        """The scene and the number of cells whose code names no valid object (some digits zero)."""
        g = self.world.grid
        if len(codes) != g * g:
            raise ValueError(f"a shapes image has {g * g} codes, got {len(codes)}")
        digits = self.codes_to_levels(torch.tensor([int(c) for c in codes])).tolist()
        objects, invalid = [], 0
        for i, (k, c, s) in enumerate(digits):
            if k == c == s == 0:
                continue
            if 0 in (k, c, s):
                invalid += 1
                continue
            objects.append(ShapeObject(i // g, i % g, self.kinds[k - 1], self.colors[c - 1], self.sizes[s - 1]))
        return Scene.of(objects), invalid


class PerfectVisualTokenizer(PerfectTokenizer):
    """The perfect tokenizer behind the visual tokenizer API (encode images / decode codes).

    encode reads a scene with the shapes oracle, decode renders it, so the sampling pipeline and
    the eval harness run unchanged on an oracle-code model (DESIGN §5's AR-only measurement).
    A cell whose code names no valid object decodes to an empty cell.
    """

    @property
    def image_size(self) -> int:
        return self.world.image_size

    def encode(self, images) -> torch.Tensor:
        from arm.data.oracle import parse

        if isinstance(images, torch.Tensor):
            images = [(im.permute(1, 2, 0).clamp(0, 1) * 255).round().byte().numpy() for im in images]
        out = [self.encode_scene(parse(im, self.world)) for im in images]
        return torch.tensor(out, dtype=torch.long).view(len(out), *self.grid)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        import numpy as np

        from arm.data.shapes import render_array

        flat = codes.reshape(codes.shape[0], -1).tolist()
        arrays = [render_array(self.decode_scene(c)[0], self.world) for c in flat]
        return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255.0
