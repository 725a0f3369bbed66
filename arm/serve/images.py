"""Image I/O at the service boundary: base64 (or data URL) in, PNG base64 out, with limits.

Checks run cheapest first and before any pixel is decoded: size of the upload, then the
format and dimensions from the header, then the full decode. PIL's own bomb guard is a
fallback; our pixel limit is far below it.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
import warnings

from PIL import Image, UnidentifiedImageError

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


# Magic numbers of common formats, to name an unsupported one without letting its PIL plugin
# parse it: only the allowed formats' parsers ever see request bytes.
_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "PNG"), (b"\xff\xd8\xff", "JPEG"), (b"GIF87a", "GIF"), (b"GIF89a", "GIF"),
    (b"BM", "BMP"), (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"), (b"%PDF", "PDF"), (b"\x00\x00\x01\x00", "ICO"),
    (b"8BPS", "PSD"), (b"%!PS", "EPS"), (b"<?xml", "XML/SVG"), (b"<svg", "SVG"),
)


def sniff_format(raw: bytes) -> str | None:
    if raw[:4] == b"RIFF" and raw[8:12] == b"WEBP":
        return "WEBP"
    if raw[4:12] in (b"ftypavif", b"ftypheic", b"ftypmif1"):
        return "AVIF/HEIF"
    return next((name for magic, name in _MAGIC if raw.startswith(magic)), None)


def open_image(raw: bytes, field: str, limits: LimitsConfig) -> Image.Image:
    """Bytes -> RGB image, or a RequestError: 415 unsupported format, 413 too many pixels, 400 corrupt."""
    allowed = ", ".join(limits.formats)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(raw), formats=list(limits.formats))  # reads the header only
    except UnidentifiedImageError:
        fmt = sniff_format(raw)
        if fmt in limits.formats:  # the right magic number, but its header does not parse
            raise RequestError(field, f"corrupt {fmt} image (unreadable header)") from None
        what = f"{fmt} images are" if fmt else "this is not a recognised image; it is"
        raise RequestError(field, f"{what} not supported; use one of {allowed}", status=415) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise RequestError(field, f"image has too many pixels (limit {limits.max_image_pixels})", status=413) from None
    except Exception as e:  # a header so broken that the plugin itself fails
        raise RequestError(field, f"corrupt image ({type(e).__name__})") from None
    fmt = (im.format or "").upper()
    if fmt not in limits.formats:  # cannot happen with formats= above; kept as the invariant
        raise RequestError(field, f"{fmt or 'unknown'} images are not supported; use one of {allowed}", status=415)
    w, h = im.size
    if w < 1 or h < 1:
        raise RequestError(field, f"image has an empty size {w}x{h}")
    if w * h > limits.max_image_pixels:
        raise RequestError(
            field, f"image is {w}x{h} = {w * h} pixels, over the limit of {limits.max_image_pixels}", status=413
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im.load()  # a truncated file fails here (ImageFile.LOAD_TRUNCATED_IMAGES stays False)
        return _to_rgb(im)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise RequestError(field, f"image has too many pixels (limit {limits.max_image_pixels})", status=413) from None
    except Exception as e:
        raise RequestError(field, f"corrupt or truncated {fmt} image ({type(e).__name__}: {e})"[:300]) from None


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode == "RGB":
        return im
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        # transparent pixels become the world's white background, not black
        rgba = im.convert("RGBA")
        out = Image.new("RGB", rgba.size, (255, 255, 255))
        out.paste(rgba, mask=rgba.getchannel("A"))
        return out
    return im.convert("RGB")


def decode_image(data: str, field: str, limits: LimitsConfig) -> Image.Image:
    return open_image(decode_base64(data, field, limits.max_image_bytes), field, limits)


def encode_png(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def png_base64(im: Image.Image) -> str:
    return base64.b64encode(encode_png(im)).decode("ascii")
