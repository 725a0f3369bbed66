"""Per-sample statistics, computed once per input record (DESIGN §4).

Everything curation decides later (filters, duplicates, splits) is a SQL predicate over the
columns produced here, so no image is decoded twice. A record either becomes one stats row
(plus the normalised images it references) or one rejection with a reason and a detail.

Images are decoded by arm.data.images, the one path the tokenizer, sampling and the service
share (limits checked from the header before any pixel is decoded; normalised to upright 8-bit
RGB), then hashed: sha256 of the pixels (exact identity), a 64-bit pHash and an
8x8 RGB thumbnail (near-duplicate candidates and their confirmation).

`process_chunk` is the unit of work of the multiprocessing pool; it is a pure function of its
input, so results do not depend on how records are split into chunks or workers.
"""

from __future__ import annotations

import hashlib
import io
import json
import unicodedata
from dataclasses import dataclass
from typing import Any

import imagehash
import numpy as np
import pyarrow as pa
from PIL import Image

from arm.data.images import RASTER_FORMATS, ImageError, ImageLimits, decode
from arm.data.records import RawRecord

THUMB_SIDE = 8
TEXT_FIELDS = ("caption", "question", "answer", "instruction")
SPLIT_SALT = b"arm-split:"


class Rejected(Exception):
    """A record that cannot become a sample: `reason` is a stable code, `detail` says why."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class StatsParams:
    max_pixels: int
    max_file_bytes: int
    splits: tuple[float, float]  # (val, test) fractions
    image_formats: tuple[str, ...] = RASTER_FORMATS
    grids: tuple[tuple[int, int], ...] = ()  # the tokenizer's aspect buckets; () = no `grid` column values

    @staticmethod
    def from_config(cfg: Any) -> "StatsParams":
        d = cfg.data
        return StatsParams(d.max_pixels, d.max_file_bytes, (d.splits.val, d.splits.test), tuple(d.image_formats),
                           tuple(cfg.tokenizer.grids))

    def grid_of(self, image: "ImageStats | None") -> str | None:
        """'HxW': the tokenizer's aspect bucket an image will be encoded on (curation records it
        so data can be filtered and counted per bucket before any tokenizer exists)."""
        if image is None or not self.grids:
            return None
        from arm.tokenizer.buckets import Buckets

        h, w = Buckets(self.grids, patch=1).choose(image.width, image.height)
        return f"{h}x{w}"

    @property
    def limits(self) -> ImageLimits:
        return ImageLimits.of_data(self)  # the same settings, under the same names


@dataclass(frozen=True)
class ImageStats:
    sha256: str  # of the normalised RGB pixels and size: the image's identity
    png: bytes  # the normalised image, PNG-encoded: what the store keeps
    width: int
    height: int
    mode: str  # as decoded, before normalisation
    format: str
    phash: int  # 64-bit perceptual hash
    thumb: bytes  # 8x8x3 uint8, BOX-downsampled
    pixel_std: float  # over all pixels and channels, 0..255; ~0 means blank


# ----------------------------------------------------------------------------- images


def _png_is_plain_rgb8(data: bytes) -> bool:
    # IHDR sits at a fixed offset: bit depth at byte 24, colour type at 25 (2 = truecolour).
    return data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 25 and data[24] == 8 and data[25] == 2


def pixel_sha256(rgb: Image.Image) -> str:
    h = hashlib.sha256(f"{rgb.width}x{rgb.height}:".encode())
    h.update(rgb.tobytes())
    return h.hexdigest()


def phash64(rgb: Image.Image) -> int:
    bits = imagehash.phash(rgb).hash.flatten()
    return int.from_bytes(np.packbits(bits).tobytes(), "big")


def thumbnail(rgb: Image.Image) -> bytes:
    return rgb.resize((THUMB_SIDE, THUMB_SIDE), Image.Resampling.BOX).tobytes()


_LEVELS = np.tile(np.arange(256, dtype=np.float64), 3)


def pixel_std(rgb: Image.Image) -> float:
    # From the 3x256-bin histogram (computed in C): exact, O(1) memory for any image size.
    hist = np.asarray(rgb.histogram(), dtype=np.float64)
    n = hist.sum()
    mean = (hist @ _LEVELS) / n
    return float(max((hist @ (_LEVELS * _LEVELS)) / n - mean * mean, 0.0) ** 0.5)


def png_encode(rgb: Image.Image) -> bytes:
    buf = io.BytesIO()
    rgb.save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def image_stats(data: bytes | None, params: StatsParams, role: str = "image") -> ImageStats:
    try:
        rgb, mode, fmt, transposed = decode(data, role, params.limits)
    except ImageError as e:
        raise Rejected(e.reason, str(e)) from None
    # An 8-bit RGB PNG already is the normalised form: keep its bytes rather than re-encode.
    png = data if (fmt == "PNG" and mode == "RGB" and not transposed and _png_is_plain_rgb8(data)) else png_encode(rgb)
    return ImageStats(
        sha256=pixel_sha256(rgb),
        png=png,
        width=rgb.width,
        height=rgb.height,
        mode=mode,
        format=fmt,
        phash=phash64(rgb),
        thumb=thumbnail(rgb),
        pixel_std=round(pixel_std(rgb), 6),
    )


# ----------------------------------------------------------------------------- text


def decode_text(value: str | bytes | None, field: str) -> str | None:
    """Strict UTF-8; Unicode NFC; surrounding whitespace and a leading BOM removed."""
    if value is None:
        return None
    if isinstance(value, (bytes, bytearray)):
        try:
            value = bytes(value).decode("utf-8", errors="strict")
        except UnicodeDecodeError as e:
            bad = bytes(value)[e.start : e.end].hex()
            raise Rejected("bad_utf8", f"{field}: invalid UTF-8 byte(s) 0x{bad} at offset {e.start}") from None
    if not isinstance(value, str):
        raise Rejected("bad_text", f"{field}: expected text, got {type(value).__name__}")
    return unicodedata.normalize("NFC", value).lstrip("\ufeff").strip()


def required_text_fields(task: str, texts: dict[str, str | None]) -> tuple[str, ...]:
    """Which text fields a task cannot do without (DESIGN §4 sequence formats)."""
    if task == "understand":
        # Image -> text: a question/answer pair, or a caption (answer to "describe").
        if texts["question"] is not None or texts["answer"] is not None or texts["caption"] is None:
            return ("question", "answer")
        return ("caption",)
    if task == "generate":
        return ("caption",)
    if task == "edit":
        return ("instruction",)
    if task == "text":
        return ("caption",)
    raise Rejected("unknown_task", f"task {task!r} is not one of understand, generate, edit, text")


def text_stats(texts: dict[str, str | None], required: tuple[str, ...]) -> dict[str, Any]:
    present = [t for t in texts.values() if t]
    joined = "".join(present)
    n = len(joined)
    return {
        "text_chars": n,
        "text_min_chars": min(len(texts[f] or "") for f in required) if required else 0,
        "text_max_chars": max((len(t) for t in present), default=0),
        "text_words": sum(len(t.split()) for t in present),
        "text_nonascii_frac": round(sum(1 for c in joined if ord(c) > 127) / n, 6) if n else 0.0,
        "text_control_chars": sum(1 for c in joined if unicodedata.category(c) == "Cc" and c not in "\n\t"),
    }


# ----------------------------------------------------------------------------- ids and splits


def _sha(parts: list[Any]) -> str:
    return hashlib.sha256(json.dumps(parts, ensure_ascii=False, separators=(",", ":")).encode()).hexdigest()


def content_id(task: str, image_sha: str | None, source_image_sha: str | None, texts: dict[str, str | None]) -> str:
    return _sha([task, image_sha, source_image_sha, *(texts[f] for f in TEXT_FIELDS)])


def text_sha(texts: dict[str, str | None]) -> str:
    return _sha([texts[f] for f in TEXT_FIELDS])


def split_key(task: str, image_sha: str | None, source_image_sha: str | None, tsha: str) -> str:
    """Every sample of one image (for edits: one source image) lands in the same split."""
    if task == "edit":
        return source_image_sha or ""
    if task == "text":
        return tsha
    return image_sha or ""


def assign_split(key: str, splits: tuple[float, float]) -> str:
    """Hash of the key -> uniform in [0, 1) -> split; independent of seeds, order and the other samples."""
    u = int.from_bytes(hashlib.sha256(SPLIT_SALT + key.encode()).digest()[:8], "big") / 2.0**64
    val, test = splits
    if u < test:
        return "test"
    if u < test + val:
        return "val"
    return "train"


# ----------------------------------------------------------------------------- records

STATS_SCHEMA = pa.schema(
    [
        ("ord", pa.int64()),  # global input order: the tie-breaker of every "keep the first"
        ("source", pa.string()),
        ("ref", pa.string()),
        ("task", pa.string()),
        ("id", pa.string()),
        ("split_key", pa.string()),
        ("split", pa.string()),
        ("caption", pa.string()),
        ("question", pa.string()),
        ("answer", pa.string()),
        ("instruction", pa.string()),
        ("text_sha", pa.string()),
        ("image_sha", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("aspect", pa.float64()),
        ("grid", pa.string()),  # the tokenizer's aspect bucket, "HxW"
        ("image_mode", pa.string()),
        ("image_format", pa.string()),
        ("phash", pa.uint64()),
        ("pixel_std", pa.float64()),
        ("source_image_sha", pa.string()),
        ("source_width", pa.int32()),
        ("source_height", pa.int32()),
        ("source_grid", pa.string()),
        ("source_phash", pa.uint64()),
        ("source_pixel_std", pa.float64()),
        ("text_chars", pa.int32()),
        ("text_min_chars", pa.int32()),
        ("text_max_chars", pa.int32()),
        ("text_words", pa.int32()),
        ("text_nonascii_frac", pa.float64()),
        ("text_control_chars", pa.int32()),
        ("meta", pa.string()),
    ]
)
STATS_COLUMNS = tuple(STATS_SCHEMA.names)

REJECTION_SCHEMA = pa.schema(
    [
        ("ord", pa.int64()),
        ("source", pa.string()),
        ("ref", pa.string()),
        ("task", pa.string()),
        ("reason", pa.string()),
        ("detail", pa.string()),
        ("stage", pa.string()),
    ]
)

IMAGE_SCHEMA = pa.schema(
    [
        ("sha256", pa.string()),
        ("png", pa.binary()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("phash", pa.uint64()),
        ("thumb", pa.list_(pa.uint8())),
    ]
)


@dataclass
class ChunkResult:
    rows: list[tuple]  # in STATS_COLUMNS order
    rejections: list[tuple]  # in REJECTION_SCHEMA order
    images: list[ImageStats]  # each distinct image of the chunk once, in first-use order
    n: int  # records in the chunk


def _source_error(rec: RawRecord) -> tuple[str, str]:
    reason, sep, detail = rec.error.partition(":")
    reason = reason.strip()
    if not sep or not reason.replace("_", "").isalnum():
        return "read_error", rec.error
    return reason, detail.strip() or reason


def record_stats(
    rec: RawRecord, ord_: int, params: StatsParams, cache: dict[bytes, ImageStats | Rejected]
) -> tuple[tuple | None, tuple | None, list[ImageStats]]:
    """One record -> (stats row, None, its images) or (None, rejection row, [])."""

    def reject(reason: str, detail: str, stage: str = "stats"):
        return None, (ord_, rec.source, rec.ref, rec.task, reason, detail, stage), []

    if rec.error:
        return reject(*_source_error(rec), stage="read")
    try:
        texts = {f: decode_text(getattr(rec, f), f) for f in TEXT_FIELDS}
        required = required_text_fields(rec.task, texts)
        for f in required:
            if not texts[f]:
                raise Rejected("empty_text", f"{f}: {'missing' if texts[f] is None else 'empty'} (required for task {rec.task})")
        roles = {"understand": ("image",), "generate": ("image",), "edit": ("image", "source_image"), "text": ()}[rec.task]
        imgs: dict[str, ImageStats] = {}
        for role in roles:
            data = getattr(rec, role)
            key = data if isinstance(data, (bytes, bytearray)) else None
            st = cache.get(key) if key is not None else None
            if st is None:
                try:
                    st = image_stats(data, params, role)
                except Rejected as e:
                    st = e
                if key is not None:
                    cache[key] = st
            if isinstance(st, Rejected):
                # The cached rejection names the role of its first use; restate it for this one.
                raise Rejected(st.reason, f"{role}: {st.detail.split(': ', 1)[-1]}")
            imgs[role] = st
    except Rejected as e:
        return reject(e.reason, e.detail)

    img, src = imgs.get("image"), imgs.get("source_image")
    tsha = text_sha(texts)
    image_sha = img.sha256 if img else None
    source_sha = src.sha256 if src else None
    key = split_key(rec.task, image_sha, source_sha, tsha)
    ts = text_stats(texts, required)
    values = {
        "ord": ord_,
        "source": rec.source,
        "ref": rec.ref,
        "task": rec.task,
        "id": content_id(rec.task, image_sha, source_sha, texts),
        "split_key": key,
        "split": assign_split(key, params.splits),
        **texts,
        "text_sha": tsha,
        "image_sha": image_sha,
        "width": img.width if img else None,
        "height": img.height if img else None,
        "aspect": round(img.width / img.height, 6) if img else None,
        "grid": params.grid_of(img),
        "image_mode": img.mode if img else None,
        "image_format": img.format if img else None,
        "phash": img.phash if img else None,
        "pixel_std": img.pixel_std if img else None,
        "source_image_sha": source_sha,
        "source_width": src.width if src else None,
        "source_height": src.height if src else None,
        "source_grid": params.grid_of(src),
        "source_phash": src.phash if src else None,
        "source_pixel_std": src.pixel_std if src else None,
        **ts,
        "meta": json.dumps(rec.meta or {}, sort_keys=True, ensure_ascii=False, default=str),
    }
    order = [s for s in (src, img) if s is not None]
    return tuple(values[c] for c in STATS_COLUMNS), None, order


_PARAMS: StatsParams | None = None


def init_worker(params: StatsParams) -> None:
    global _PARAMS
    _PARAMS = params


def process_chunk(chunk: list[tuple[int, RawRecord]], params: StatsParams | None = None) -> ChunkResult:
    params = params or _PARAMS
    if params is None:
        raise RuntimeError("process_chunk needs StatsParams (init_worker was not called)")
    cache: dict[bytes, ImageStats | Rejected] = {}
    rows, rejections, images, seen = [], [], [], set()
    for ord_, rec in chunk:
        row, rej, imgs = record_stats(rec, ord_, params, cache)
        if row is not None:
            rows.append(row)
            for im in imgs:
                if im.sha256 not in seen:
                    seen.add(im.sha256)
                    images.append(im)
        else:
            rejections.append(rej)
    return ChunkResult(rows, rejections, images, len(chunk))
