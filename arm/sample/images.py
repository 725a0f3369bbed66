"""Image inputs and outputs of the sampling pipeline, with errors that name the file."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from arm.config import DataConfig
from arm.data.images import ImageError, ImageLimits, decode, to_rgb
from arm.io import atomic_write_bytes


class ImageInputError(ValueError):
    """An image argument that is missing or cannot be decoded; the message names it."""


def load_image(path: str | Path, limits: ImageLimits | None = None) -> Image.Image:
    """An image file -> upright 8-bit RGB, decoded as curation decodes training images.

    `limits` defaults to curation's defaults (data.max_pixels, data.max_file_bytes): the model
    takes at sampling what it could have been trained on."""
    path = Path(path)
    limits = limits or ImageLimits.of_data(DataConfig())
    if not path.exists():
        raise ImageInputError(f"{path}: no such file")
    if not path.is_file():
        raise ImageInputError(f"{path}: not a file")
    size = path.stat().st_size
    if size > limits.max_bytes:  # refused before reading it
        raise ImageInputError(f"{path}: unreadable image: {size} bytes, over the limit {limits.bytes_setting}={limits.max_bytes}")
    try:
        return decode(path.read_bytes(), str(path), limits).image
    except ImageError as e:
        raise ImageInputError(f"{path}: unreadable image: {e.message}") from None


def as_pil(image: Any) -> Image.Image:
    """An upright RGB PIL image from a PIL image, a path, or a float tensor [3, H, W] in [0, 1]."""
    if isinstance(image, Image.Image):
        return to_rgb(image)
    if isinstance(image, (str, Path)):
        return load_image(image)
    if isinstance(image, torch.Tensor):
        return to_pil(image)
    raise ImageInputError(f"unsupported image input of type {type(image).__name__}")


def to_pil(pixels: torch.Tensor) -> Image.Image:
    if pixels.dim() != 3 or pixels.shape[0] not in (1, 3):
        raise ImageInputError(f"expected an image tensor [3, H, W], got shape {tuple(pixels.shape)}")
    arr = (pixels.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
    if arr.shape[0] == 1:
        arr = arr.expand(3, -1, -1)
    return Image.fromarray(arr.permute(1, 2, 0).cpu().numpy(), "RGB")


def image_format(path: str | Path) -> str:
    """The PIL format for an output path's extension, or an error naming the path."""
    ext = Path(path).suffix.lower()
    fmt = Image.registered_extensions().get(ext)
    if fmt is None or fmt not in Image.SAVE:
        raise ImageInputError(f"{path}: cannot tell an image format from the extension {ext or '(none)'!r}")
    return fmt


def save_image(image: Image.Image, path: str | Path) -> Path:
    buf = io.BytesIO()
    image.save(buf, format=image_format(path))
    return atomic_write_bytes(path, buf.getvalue())
