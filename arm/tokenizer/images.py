"""Turning user images into the tokenizer's input: float [B, 3, S, S] in [0, 1], or a clear error."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

_RANGE_TOLERANCE = 1e-3


def pil_to_uint8(image: Image.Image, size: int) -> np.ndarray:
    """RGB uint8 [3, S, S]; alpha is composited onto white (the shapes world's background)."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(canvas, rgba)
    image = image.convert("RGB")
    if image.size != (size, size):
        # Squash rather than crop, as SigLIP's own preprocessing does: nothing is cut away.
        image = image.resize((size, size), Image.BICUBIC)
    return np.asarray(image, dtype=np.uint8).transpose(2, 0, 1).copy()


def to_pixels(images: Sequence[Image.Image] | torch.Tensor | np.ndarray, size: int) -> torch.Tensor:
    """Validates and converts `images` to float32 [B, 3, size, size] in [0, 1].

    Accepts a list of PIL images (any mode, any size), a uint8 tensor/array [B, C, H, W] or a
    float one in [0, 1], with C in {1, 3, 4} (grey is repeated, alpha composited onto white).
    """
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(np.ascontiguousarray(images))
    if isinstance(images, torch.Tensor):
        return _tensor_to_pixels(images, size)
    if isinstance(images, Image.Image):
        raise TypeError("images: pass a list of PIL images (got a single PIL image)")
    try:
        images = list(images)
    except TypeError:
        raise TypeError(f"images: expected a list of PIL images or a tensor, got {type(images).__name__}") from None
    if not images:
        raise ValueError("images: empty batch (need at least one image)")
    arrays = []
    for i, im in enumerate(images):
        if not isinstance(im, Image.Image):
            raise TypeError(f"images[{i}]: expected a PIL image, got {type(im).__name__}")
        if im.width == 0 or im.height == 0:
            raise ValueError(f"images[{i}]: empty image ({im.width}x{im.height})")
        arrays.append(pil_to_uint8(im, size))
    return torch.from_numpy(np.stack(arrays)).float().div_(255.0)


def _tensor_to_pixels(x: torch.Tensor, size: int) -> torch.Tensor:
    if x.ndim == 3:
        raise ValueError(f"images: expected a batch [B, C, H, W], got shape {tuple(x.shape)} (add a batch dim)")
    if x.ndim != 4:
        raise ValueError(f"images: expected a batch [B, C, H, W], got shape {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError("images: empty batch (need at least one image)")
    if x.shape[2] == 0 or x.shape[3] == 0:
        raise ValueError(f"images: empty spatial size {tuple(x.shape[2:])}")
    channels = x.shape[1]
    if channels not in (1, 3, 4):
        raise ValueError(f"images: expected 1 (grey), 3 (RGB) or 4 (RGBA) channels, got {channels} (shape {tuple(x.shape)})")
    if x.dtype == torch.uint8:
        x = x.float() / 255.0
    elif x.is_floating_point():
        x = x.float()
        if not torch.isfinite(x).all():
            raise ValueError("images: tensor contains NaN or infinite values")
        lo, hi = float(x.min()), float(x.max())
        if lo < -_RANGE_TOLERANCE or hi > 1 + _RANGE_TOLERANCE:
            raise ValueError(f"images: float values must lie in [0, 1], got [{lo:.3g}, {hi:.3g}]")
        x = x.clamp(0.0, 1.0)
    else:
        raise ValueError(f"images: unsupported dtype {x.dtype} (use uint8 or float in [0, 1])")
    if channels == 1:
        x = x.expand(-1, 3, -1, -1)
    elif channels == 4:
        rgb, alpha = x[:, :3], x[:, 3:4]
        x = rgb * alpha + (1.0 - alpha)
    if tuple(x.shape[-2:]) != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
    return x.contiguous()
