"""Images the benchmarks need: ground-truth renders, t10k images, tokenizer round trips."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from arm.config import WorldConfig
from arm.data import shapes
from arm.data.shapes import Scene


def render(scene_json: list[dict], world: WorldConfig) -> Image.Image:
    return shapes.render(Scene.from_json(scene_json), world)


def blank(world: WorldConfig) -> Image.Image:
    return Image.new("RGB", (world.image_size, world.image_size), tuple(world.background))


def fmnist_images(pixels: np.ndarray, indices: Sequence[int]) -> list[Image.Image]:
    """t10k images as the curated data stores them (28x28 grey)."""
    return [Image.fromarray(np.ascontiguousarray(pixels[i], dtype=np.uint8)) for i in indices]


def _to_pil(pixels: torch.Tensor) -> Image.Image:
    arr = (pixels.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
    if arr.shape[0] == 1:
        arr = arr.expand(3, -1, -1)
    return Image.fromarray(arr.permute(1, 2, 0).cpu().numpy(), "RGB")


def roundtrip(tokenizer, images: Sequence[Image.Image], batch_size: int = 64) -> tuple[list[Image.Image], torch.Tensor]:
    """encode -> decode through the visual tokenizer: what the best possible AR model could emit.

    Returns the reconstructions and the codes [N, h, w].
    """
    recons, codes = [], []
    for i in range(0, len(images), batch_size):
        batch = [im.convert("RGB") for im in images[i : i + batch_size]]
        c = tokenizer.encode(batch)
        codes.append(c.cpu())
        recons += [_to_pil(p) for p in tokenizer.decode(c)]
    return recons, torch.cat(codes) if codes else torch.zeros(0, dtype=torch.long)
