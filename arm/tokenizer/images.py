"""Turning user images into the tokenizer's input: float [B, 3, H, W] in [0, 1], or a clear error.

PIL images and uint8 tensors are normalised and resized by arm.data.images (the path curation,
sampling and the service share); float tensors get the same treatment in float: alpha on
ALPHA_BACKGROUND, resized with RESAMPLE.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from arm.data.images import ALPHA_BACKGROUND, RESAMPLE, to_uint8

_RANGE_TOLERANCE = 1e-3

Size = int | tuple[int, int]  # S (square) or (height, width) in pixels


def _hw(size: Size) -> tuple[int, int]:
    return (int(size), int(size)) if isinstance(size, (int, np.integer)) else (int(size[0]), int(size[1]))


def pil_to_uint8(image: Image.Image, size: Size) -> np.ndarray:
    """RGB uint8 [3, H, W]: arm.data.images' normalisation (EXIF, 16-bit, alpha) and resize."""
    h, w = _hw(size)
    return to_uint8([image], (w, h))[0]


def to_pixels(images: Sequence[Image.Image] | torch.Tensor | np.ndarray, size: Size) -> torch.Tensor:
    """Validates and converts `images` to float32 [B, 3, H, W] in [0, 1], squashed to `size`
    (S for S x S, or (H, W)).

    Accepts a list of PIL images (any mode, any size), a uint8 tensor/array [B, C, H, W] or a
    float one in [0, 1], with C in {1, 3, 4} (grey is repeated, alpha composited onto white).
    """
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(np.ascontiguousarray(images))
    if isinstance(images, torch.Tensor):
        return _tensor_to_pixels(images, _hw(size))
    images = pil_list(images)
    return torch.from_numpy(np.stack([pil_to_uint8(im, size) for im in images])).float().div_(255.0)


def pil_list(images: Sequence[Image.Image]) -> list[Image.Image]:
    """`images` as a non-empty list of non-empty PIL images, or an error naming the bad one."""
    if isinstance(images, Image.Image):
        raise TypeError("images: pass a list of PIL images (got a single PIL image)")
    try:
        images = list(images)
    except TypeError:
        raise TypeError(f"images: expected a list of PIL images or a tensor, got {type(images).__name__}") from None
    if not images:
        raise ValueError("images: empty batch (need at least one image)")
    for i, im in enumerate(images):
        if not isinstance(im, Image.Image):
            raise TypeError(f"images[{i}]: expected a PIL image, got {type(im).__name__}")
        if im.width == 0 or im.height == 0:
            raise ValueError(f"images[{i}]: empty image ({im.width}x{im.height})")
    return images


def pixels_to_uint8(pixels01: torch.Tensor) -> torch.Tensor:
    """The inverse of `to_pixels`: float [B, 3, H, W] in [0, 1] (clamped) -> 8-bit uint8, rounded."""
    return (pixels01.clamp(0, 1) * 255).round().to(torch.uint8)


def _tensor_to_pixels(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
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
        if channels == 3 and tuple(x.shape[-2:]) == size:
            return x.float().div_(255.0).contiguous()  # already what the PIL path would make of it
        # 8-bit images take the PIL images' path, so they come out bit for bit the same (Pillow
        # rounds to 8 bits between its two resize passes; a float resize would not)
        arr = x.permute(0, 2, 3, 1).cpu().numpy()
        mode = {1: "L", 3: "RGB", 4: "RGBA"}[channels]
        return to_pixels([Image.fromarray(a[..., 0] if channels == 1 else a, mode) for a in arr], size)
    if x.is_floating_point():
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
        paper = torch.tensor(ALPHA_BACKGROUND, dtype=x.dtype).view(1, 3, 1, 1) / 255.0
        x = rgb * alpha + paper * (1.0 - alpha)
    if tuple(x.shape[-2:]) != size:
        x = _resize(x, size)
    return x.contiguous()


def _resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    # Pillow's filter on float ("F" mode) channels rather than torch's interpolate: torch's
    # bicubic matches Pillow's kernel only when shrinking, so a tensor and the same image given
    # as PIL would otherwise be resized differently.
    planes = x.detach().cpu().numpy().astype(np.float32, copy=False)
    out = np.empty((*planes.shape[:2], *size), dtype=np.float32)
    for b, c in np.ndindex(*planes.shape[:2]):
        out[b, c] = np.asarray(Image.fromarray(planes[b, c], "F").resize(size[::-1], RESAMPLE))
    return torch.from_numpy(out).to(x.device).clamp_(0.0, 1.0)
