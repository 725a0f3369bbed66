"""Image I/O at the service boundary: base64 (or data URL) in, PNG base64 out, with limits.

Checks run cheapest first and before any pixel is decoded: size of the upload (here), then the
format and dimensions from the header, then the full decode (arm.data.images, shared with
curation and sampling). Only the allowed formats' Pillow plugins ever parse request bytes.
"""

from __future__ import annotations

import base64
import binascii
import io
import re

from PIL import Image

from arm.data.images import ImageError, ImageLimits, decode
from arm.serve.config import LimitsConfig
from arm.serve.errors import RequestError

_DATA_URL = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(;[\w-]+=[\w.-]+)*;base64,", re.ASCII)


def decode_base64(data: str, field: str, max_bytes: int) -> bytes:
    """Strict base64 (standard alphabet, optional `data:...;base64,` prefix) -> bytes."""
    m = _DATA_URL.match(data)
    if m:
        data = data[m.end():]
    elif data.startswith("data:"):
        raise RequestError(field, "data URL must be base64-encoded (data:<mime>;base64,<data>)")
    data = "".join(data.split())  # line-wrapped base64 is common
    if not data:
        raise RequestError(field, "is empty; send the image as base64")
    # Cheap bound before decoding: 4 base64 chars carry 3 bytes.
    if len(data) // 4 * 3 > max_bytes + 3:
        raise RequestError(field, f"image is over the limit of {max_bytes} bytes", status=413)
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(field, "is not valid base64") from None
    if len(raw) > max_bytes:
        raise RequestError(field, f"image is {len(raw)} bytes, over the limit of {max_bytes}", status=413)
    return raw


# Refused bytes -> HTTP status: too big is 413, not an image we take is 415, the rest is bad input.
_STATUS = {"file_too_large": 413, "oversized": 413, "not_an_image": 415, "unsupported_format": 415}


def limits_of(limits: LimitsConfig) -> ImageLimits:
    return ImageLimits(limits.max_image_pixels, limits.max_image_bytes, tuple(limits.formats),
                       "serve.limits.max_image_pixels", "serve.limits.max_image_bytes")


def open_image(raw: bytes, field: str, limits: LimitsConfig) -> Image.Image:
    """Bytes -> upright RGB image (arm.data.images: the decoding curation applied to the training
    data), or a RequestError: 415 unsupported format, 413 too large, 400 corrupt."""
    try:
        return decode(raw, field, limits_of(limits)).image
    except ImageError as e:
        raise RequestError(field, e.message[:300], status=_STATUS.get(e.reason, 400)) from None


def decode_image(data: str, field: str, limits: LimitsConfig) -> Image.Image:
    return open_image(decode_base64(data, field, limits.max_image_bytes), field, limits)


def encode_png(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def png_base64(im: Image.Image) -> str:
    return base64.b64encode(encode_png(im)).decode("ascii")
