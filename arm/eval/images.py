"""Images the benchmarks need: ground-truth renders, t10k images, tokenizer round trips."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from arm.config import WorldConfig
from arm.data import shapes
from arm.data.images import to_rgb
from arm.data.shapes import Scene
from arm.sample.images import to_pil


def render(scene_json: list[dict], world: WorldConfig) -> Image.Image:
    return shapes.render(Scene.from_json(scene_json), world)


def blank(world: WorldConfig) -> Image.Image:
    return Image.new("RGB", (world.image_size, world.image_size), tuple(world.background))


def fmnist_images(pixels: np.ndarray, indices: Sequence[int]) -> list[Image.Image]:
    """t10k images as the curated data stores them (28x28 grey)."""
    return [Image.fromarray(np.ascontiguousarray(pixels[i], dtype=np.uint8)) for i in indices]


def roundtrip(tokenizer, images: Sequence[Image.Image], batch_size: int = 64) -> tuple[list[Image.Image], torch.Tensor]:
    """encode -> decode through the visual tokenizer: what the best possible AR model could emit.

    Returns the reconstructions and the codes [N, h, w].
    """
    recons, codes = [], []
    for i in range(0, len(images), batch_size):
        batch = [to_rgb(im) for im in images[i : i + batch_size]]
        c = tokenizer.encode(batch)
        codes.append(c.cpu())
        recons += [to_pil(p) for p in tokenizer.decode(c)]
    return recons, torch.cat(codes) if codes else torch.zeros(0, dtype=torch.long)
