"""The one way image bytes become the pixels the model sees (issue 16).

Curation, the tokenizer, `arm describe`/`arm edit` and the BentoML service all read images
through this module, so the model is served exactly what it was trained on:

1. Limits before pixels (`decode`): the byte size, then the format and the dimensions from the
   header (`Image.open` parses only the header), then the full decode; a truncated file is an
   error, never half an image. Pillow's own decompression-bomb guard (`Image.MAX_IMAGE_PIXELS`,
   process-wide) stays in force as the ceiling above our limits: it is never switched off, since
   changing a global from the service's worker threads would race.
2. Normalisation (`to_rgb`): EXIF orientation applied; 16-bit (and 32-bit integer) grey scaled
   to 0..255 rather than clipped; CMYK, palette and grey converted; alpha composited on
   `ALPHA_BACKGROUND`. The result is always upright 8-bit RGB.
3. One resize policy (`resize`): squash to the target size with Pillow's bicubic filter.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

# Transparent pixels read as paper: the shapes world's background is white, and so is a page.
ALPHA_BACKGROUND = (255, 255, 255)
# Squash rather than crop, as SigLIP's own preprocessing does, so nothing is cut away. Pillow's
# bicubic widens its support when it shrinks an image, so downscaling is antialiased.
RESAMPLE = Image.Resampling.BICUBIC
EXIF_ORIENTATION = 0x0112

ImageFile.LOAD_TRUNCATED_IMAGES = False  # Pillow's default, relied on: a truncated file fails in load()

# Errors a Pillow plugin raises on malformed data, beyond OSError.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error)

# Magic numbers of common formats: when the allowed formats' parsers refuse the bytes, this names
# what they are without handing them to any other plugin.
_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "PNG"), (b"\xff\xd8\xff", "JPEG"), (b"GIF87a", "GIF"), (b"GIF89a", "GIF"),
    (b"BM", "BMP"), (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"), (b"%PDF", "PDF"), (b"\x00\x00\x01\x00", "ICO"),
    (b"8BPS", "PSD"), (b"%!PS", "EPS"), (b"<?xml", "XML/SVG"), (b"<svg", "SVG"),
)


class ImageError(ValueError):
    """An image that cannot become pixels. `reason` is a stable code (the curated store's
    rejection reason), `what` names the input (a role, a field, a path), `message` says why."""

    def __init__(self, reason: str, what: str, message: str):
        super().__init__(f"{what}: {message}")
        self.reason = reason
        self.what = what
        self.message = message


# What curation accepts by default (data.image_formats): raster formats with plain decoders.
RASTER_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")


@dataclass(frozen=True)
class ImageLimits:
    max_pixels: int
    max_bytes: int
    formats: tuple[str, ...] | None = None  # the Pillow formats accepted; None: any Pillow reads
    # the settings that set the limits, named in errors so a refusal says which knob to turn
    pixels_setting: str = "max_pixels"
    bytes_setting: str = "max_bytes"

    @classmethod
    def of_data(cls, data: Any) -> "ImageLimits":
        """The curation limits (`data:` in params.yaml): what training data may be."""
        return cls(data.max_pixels, data.max_file_bytes, tuple(data.image_formats), "data.max_pixels",
                   "data.max_file_bytes")


class Decoded(NamedTuple):
    image: Image.Image  # upright 8-bit RGB
    mode: str  # as stored, before normalisation
    format: str
    transposed: bool  # EXIF orientation was applied


def sniff_format(data: bytes) -> str | None:
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    if data[4:12] in (b"ftypavif", b"ftypheic", b"ftypmif1"):
        return "AVIF/HEIF"
    return next((name for magic, name in _MAGIC if data.startswith(magic)), None)


def _unidentified(data: bytes, what: str, limits: ImageLimits) -> ImageError:
    fmt = sniff_format(data)
    allowed = f"; use one of {', '.join(limits.formats)}" if limits.formats else ""
    if fmt is not None and (limits.formats is None or fmt in limits.formats):
        return ImageError("corrupt_image", what, f"corrupt {fmt} image (unreadable header)")
    if fmt is not None:
        return ImageError("unsupported_format", what, f"{fmt} images are not supported{allowed}")
    return ImageError("not_an_image", what, f"not a recognised image format ({len(data)} bytes){allowed}")


def decode(data: bytes | None, what: str, limits: ImageLimits) -> Decoded:
    """Image file bytes -> upright 8-bit RGB, checking `limits` before any pixel is decoded.

    Raises ImageError naming `what` and the reason."""
    if data is None:
        raise ImageError("missing_image", what, "no image in the record")
    if len(data) == 0:
        raise ImageError("empty_file", what, "zero bytes")
    if len(data) > limits.max_bytes:
        raise ImageError("file_too_large", what, f"{len(data)} bytes, over the limit {limits.bytes_setting}={limits.max_bytes}")
    try:
        im = Image.open(io.BytesIO(data), formats=list(limits.formats) if limits.formats else None)
    except UnidentifiedImageError:
        raise _unidentified(data, what, limits) from None
    except Image.DecompressionBombError as e:
        raise ImageError("oversized", what, f"over Pillow's decompression-bomb limit: {e}") from None
    except _DECODE_ERRORS as e:
        raise ImageError("corrupt_image", what, f"unreadable header ({type(e).__name__}: {e})") from None
    w, h = im.size
    fmt = im.format or "unknown"
    if w <= 0 or h <= 0:
        raise ImageError("corrupt_image", what, f"{fmt} header says {w}x{h}")
    if w * h > limits.max_pixels:
        # Decided from the header alone: the pixels of a decompression bomb are never allocated.
        raise ImageError("oversized", what, f"{fmt} {w}x{h} = {w * h} pixels, over the limit "
                                            f"{limits.pixels_setting}={limits.max_pixels}")
    mode = im.mode
    try:
        im.load()
        upright = _upright(im)
        rgb = _rgb(upright)
    except ImageError as e:
        raise ImageError(e.reason, what, e.message) from None
    except Image.DecompressionBombError as e:
        raise ImageError("oversized", what, f"over Pillow's decompression-bomb limit: {e}") from None
    except _DECODE_ERRORS as e:
        raise ImageError("corrupt_image", what, f"{fmt} {w}x{h}: corrupt or truncated ({type(e).__name__}: {e})") from None
    return Decoded(rgb, mode, fmt, upright is not im)


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL image -> upright 8-bit RGB (the same normalisation `decode` applies)."""
    return _rgb(_upright(image))


def resize(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """`image` squashed to `size` (width, height) with RESAMPLE; the image itself when it fits."""
    return image if image.size == tuple(size) else image.resize(tuple(size), RESAMPLE)


def to_uint8(images: Sequence[Image.Image], size: tuple[int, int] | None = None) -> np.ndarray:
    """PIL images -> uint8 [N, 3, H, W]: normalised by `to_rgb`, resized to `size` (width, height)
    when given (else all must share one size)."""
    arrays = []
    for im in images:
        rgb = to_rgb(im)
        arrays.append(np.asarray(resize(rgb, size) if size is not None else rgb, dtype=np.uint8).transpose(2, 0, 1))
    return np.stack(arrays)


def _upright(im: Image.Image) -> Image.Image:
    # A phone JPEG stores the sensor's rows and says how to turn them; transposing here means the
    # model never sees a sideways picture. exif_transpose also clears the tag, so this is idempotent.
    if im.getexif().get(EXIF_ORIENTATION, 1) in (1, None):
        return im
    return ImageOps.exif_transpose(im)


def _rgb(im: Image.Image) -> Image.Image:
    mode = im.mode
    if mode == "RGB":
        return im
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # 16-bit grey (PNG/TIFF; Pillow may hold it as 32-bit "I"): 0..65535 scaled to 0..255.
        # Pillow's own convert("L") clips instead, so a mid-grey of 32768 would become white.
        arr = np.clip(np.rint(np.asarray(im, dtype=np.float64) / 257.0), 0, 255).astype(np.uint8)
        return Image.fromarray(arr, "L").convert("RGB")
    if mode == "F":
        arr = np.clip(np.rint(np.asarray(im, dtype=np.float64)), 0, 255).astype(np.uint8)
        return Image.fromarray(arr, "L").convert("RGB")
    if mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    elif mode in ("PA", "LA", "La", "RGBa"):
        im = im.convert("RGBA")
    elif mode == "L" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode == "RGBA":
        paper = Image.new("RGBA", im.size, (*ALPHA_BACKGROUND, 255))
        return Image.alpha_composite(paper, im).convert("RGB")
    try:
        return im.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV
    except ValueError as e:
        raise ImageError("unsupported_mode", "image", f"cannot convert mode {mode} to RGB: {e}") from None
