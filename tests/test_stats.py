"""Per-sample statistics on raw bytes: decoding, normalisation, hashes, texts, ids and splits."""

from __future__ import annotations

import io
import random
import resource
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from arm.config import WorldConfig
from arm.data import shapes
from arm.data.records import RawRecord
from arm.data.stats import (
    Rejected,
    StatsParams,
    assign_split,
    content_id,
    decode_text,
    image_stats,
    pixel_sha256,
    process_chunk,
    record_stats,
)

PARAMS = StatsParams(max_pixels=4096 * 4096, max_file_bytes=64 << 20, splits=(0.05, 0.05))


def encode(im: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def photo(size=(150, 100)) -> Image.Image:
    from skimage import data

    return Image.fromarray(data.coffee()).resize(size, Image.Resampling.LANCZOS)


def decoded(st) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(st.png)).convert("RGB"))


def bomb_png(side: int = 20000) -> bytes:
    """A valid 1-bit greyscale PNG of side x side pixels in ~50 kB: 400 Mpx once decoded."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\x00" + b"\x00" * ((side + 7) // 8)
    comp = zlib.compressobj(9)
    idat = b"".join(comp.compress(row) for _ in range(side)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


# ----------------------------------------------------------------------------- bad bytes


def reject_reason(data, role="image") -> Rejected:
    with pytest.raises(Rejected) as e:
        image_stats(data, PARAMS, role)
    return e.value


def test_empty_text_and_truncated_inputs_have_their_own_reasons():
    jpeg = encode(photo(), "JPEG", quality=90)
    assert reject_reason(b"").reason == "empty_file"
    assert reject_reason(None).reason == "missing_image"
    r = reject_reason(b"this is a text file, not a PNG\n")
    assert r.reason == "not_an_image" and r.detail.startswith("image:")
    r = reject_reason(jpeg[: len(jpeg) // 2], role="source_image")
    assert r.reason == "corrupt_image" and "truncated" in r.detail and r.detail.startswith("source_image:")
    png = encode(photo())
    assert reject_reason(png[:-40]).reason == "corrupt_image"
    small = StatsParams(max_pixels=PARAMS.max_pixels, max_file_bytes=100, splits=PARAMS.splits)
    with pytest.raises(Rejected, match="file_too_large"):
        image_stats(png, small)


def test_decompression_bomb_is_rejected_from_its_header_without_decoding():
    over_ours, over_pillows = bomb_png(5000), bomb_png()
    assert len(over_pillows) < 200_000
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    # 25 Mpx: over max_pixels (16.7 Mpx), under Pillow's guard; our header check names the size
    r = reject_reason(over_ours)
    assert r.reason == "oversized" and "5000x5000" in r.detail and "data.max_pixels=16777216" in r.detail
    # 400 Mpx: Pillow's own guard (never switched off) refuses it while parsing the header
    r = reject_reason(over_pillows)
    assert r.reason == "oversized" and "400000000 pixels" in r.detail and "decompression-bomb" in r.detail
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mb < 50  # decoding would take 25 MB and 400 MB in mode 1, 75 MB and 1.2 GB as RGB


# ----------------------------------------------------------------------------- normalisation


def test_rgb_png_bytes_are_kept_and_hash_is_of_pixels():
    im = photo()
    png = encode(im)
    st = image_stats(png, PARAMS)
    assert st.png == png and (st.width, st.height) == (150, 100) and st.mode == "RGB" and st.format == "PNG"
    # The same pixels in another container are the same image.
    st2 = image_stats(encode(im, "PNG", compress_level=0), PARAMS)
    st3 = image_stats(encode(im, "BMP"), PARAMS)
    assert st.sha256 == st2.sha256 == st3.sha256 == pixel_sha256(im)
    assert (decoded(st3) == np.asarray(im)).all()


def test_cmyk_is_converted_to_rgb():
    cmyk = Image.new("CMYK", (16, 16), (255, 0, 0, 0))  # pure cyan ink
    cmyk.paste((0, 0, 0, 255), (0, 0, 8, 16))  # left half: pure black ink
    st = image_stats(encode(cmyk, "TIFF"), PARAMS)
    px = decoded(st)
    assert st.mode == "CMYK"
    assert tuple(px[0, 12]) == (0, 255, 255) and tuple(px[0, 2]) == (0, 0, 0)
    px = decoded(image_stats(encode(cmyk, "JPEG", quality=95), PARAMS))
    assert np.abs(px[4, 13].astype(int) - (0, 255, 255)).max() <= 6


def test_sixteen_bit_grey_is_scaled_not_clipped():
    arr = np.array([[0, 65535, 32896, 257 * 10]], dtype=np.uint16).repeat(4, axis=0)
    im = Image.fromarray(arr)
    assert im.mode.startswith("I;16")
    st = image_stats(encode(im), PARAMS)
    px = decoded(st)
    assert st.mode in ("I;16", "I")  # how Pillow opens a 16-bit PNG
    assert px[0, :, 0].tolist() == [0, 255, 128, 10] and (px[..., 0] == px[..., 2]).all()


def test_palette_with_transparency_and_rgba_are_composited_on_white():
    p = Image.new("P", (4, 4), 0)
    p.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    p.putpixel((1, 0), 1)
    px = decoded(image_stats(encode(p), PARAMS))
    assert tuple(px[0, 0]) == (10, 20, 30) and tuple(px[0, 1]) == (200, 100, 50)
    p.info["transparency"] = 0  # index 0 is transparent -> white paper
    st = image_stats(encode(p, transparency=0), PARAMS)
    px = decoded(st)
    assert st.mode == "P" and tuple(px[0, 0]) == (255, 255, 255) and tuple(px[0, 1]) == (200, 100, 50)

    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 128))
    rgba.putpixel((0, 0), (0, 0, 255, 255))
    rgba.putpixel((1, 0), (0, 0, 0, 0))
    st = image_stats(encode(rgba), PARAMS)
    px = decoded(st).astype(int)
    assert st.mode == "RGBA"
    assert tuple(px[0, 0]) == (0, 0, 255) and tuple(px[0, 1]) == (255, 255, 255)
    assert px[1, 1, 0] == 255 and abs(px[1, 1, 1] - 127) <= 1 and abs(px[1, 1, 2] - 127) <= 1
    la = Image.new("LA", (2, 2), (0, 0))  # fully transparent black
    assert tuple(decoded(image_stats(encode(la), PARAMS))[0, 0]) == (255, 255, 255)


def test_exif_rotated_photo_is_stored_upright():
    im = photo((150, 100))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    data = encode(im, "JPEG", quality=90, exif=exif.tobytes())
    st = image_stats(data, PARAMS)
    assert (st.width, st.height) == (100, 150)
    as_stored = Image.open(io.BytesIO(data)).convert("RGB")  # same JPEG decode, orientation ignored
    assert (decoded(st) == np.asarray(as_stored.transpose(Image.Transpose.ROTATE_270))).all()


def test_blank_image_has_zero_std_and_photo_does_not():
    assert image_stats(encode(Image.new("RGB", (32, 32), (90, 90, 90))), PARAMS).pixel_std == 0.0
    st = image_stats(encode(photo()), PARAMS)
    assert st.pixel_std == pytest.approx(float(np.asarray(photo(), dtype=np.float64).std()), abs=1e-3)


# ----------------------------------------------------------------------------- near-duplicate evidence


def linf(a: bytes, b: bytes) -> float:
    return float(np.abs(np.frombuffer(a, np.uint8).astype(int) - np.frombuffer(b, np.uint8).astype(int)).max()) / 255


def test_reencoded_photo_is_near_identical_but_distinct_shapes_scenes_are_not():
    im = photo((300, 200))
    a = image_stats(encode(im), PARAMS)
    for variant in (encode(im, "JPEG", quality=90), encode(im.resize((270, 180), Image.Resampling.LANCZOS))):
        b = image_stats(variant, PARAMS)
        assert a.sha256 != b.sha256
        assert bin(a.phash ^ b.phash).count("1") <= 2 and linf(a.thumb, b.thumb) <= 0.04

    world = WorldConfig()
    obj = shapes.ShapeObject(0, 0, "circle", "red", "small")
    twin = shapes.ShapeObject(0, 0, "circle", "yellow", "small")
    base = [shapes.ShapeObject(2, 2, "square", "blue", "large")]
    s1 = image_stats(encode(shapes.render(shapes.Scene.of(base + [obj]), world)), PARAMS)
    s2 = image_stats(encode(shapes.render(shapes.Scene.of(base + [twin]), world)), PARAMS)
    # A small object recoloured: invisible to pHash and to the thumbnail's mean, not to its max.
    mean = np.abs(np.frombuffer(s1.thumb, np.uint8).astype(int) - np.frombuffer(s2.thumb, np.uint8)).mean() / 255
    assert mean < 0.04 and linf(s1.thumb, s2.thumb) > 0.04


# ----------------------------------------------------------------------------- texts, ids, splits


def test_text_is_strict_utf8_normalised():
    assert decode_text("\ufeff  cafe\u0301 ", "caption") == "caf\u00e9"
    assert decode_text("café".encode(), "caption") == "café"
    with pytest.raises(Rejected) as e:
        decode_text(b"bad \xff\xfe caption", "answer")
    assert e.value.reason == "bad_utf8" and e.value.detail.startswith("answer:") and "0xff at offset 4" in e.value.detail


def rec(task="generate", **kw) -> RawRecord:
    img = kw.pop("image", encode(photo((40, 30))))
    return RawRecord(source="t", ref=kw.pop("ref", "r"), task=task, image=img, **kw)


def row_of(r: RawRecord):
    row, rej, _ = record_stats(r, 0, PARAMS, {})
    return row, rej


def test_required_texts_per_task():
    assert row_of(rec("generate", caption="a cup"))[0] is not None
    _, rej = row_of(rec("generate", caption="   "))
    assert rej[4:6] == ("empty_text", "caption: empty (required for task generate)")
    _, rej = row_of(rec("understand", question="what is it?"))
    assert rej[4] == "empty_text" and rej[5].startswith("answer: missing")
    assert row_of(rec("understand", caption="a cup of coffee"))[0] is not None
    _, rej = row_of(rec("edit", instruction="make it red"))  # no source image
    assert rej[4:6] == ("missing_image", "source_image: no image in the record")
    assert row_of(rec("edit", instruction="make it red", source_image=encode(photo((40, 30)))))[0] is not None
    _, rej = row_of(rec("text", image=None, caption=b"\xc3\x28"))
    assert rej[4] == "bad_utf8" and rej[5].startswith("caption:")
    row, _ = row_of(rec("text", image=None, caption="plain text"))
    assert row is not None
    _, rej = row_of(RawRecord(source="t", ref="x", task="generate", error="missing_file: /data/x.png"))
    assert rej[4:] == ("missing_file", "/data/x.png", "read")


def test_content_id_and_split_are_deterministic_functions_of_content():
    texts = {"caption": None, "question": "how many?", "answer": "two", "instruction": None}
    a = content_id("understand", "s1", None, texts)
    assert a == content_id("understand", "s1", None, dict(texts))
    assert a != content_id("understand", "s1", None, {**texts, "question": "how many shapes?"})
    assert a != content_id("understand", "s2", None, texts)
    keys = [f"{i:064x}" for i in random.Random(0).sample(range(10**12), 20000)]
    splits = [assign_split(k, (0.05, 0.1)) for k in keys]
    assert abs(splits.count("val") / len(keys) - 0.05) < 0.01
    assert abs(splits.count("test") / len(keys) - 0.1) < 0.01
    assert splits == [assign_split(k, (0.05, 0.1)) for k in keys]


def test_samples_of_one_image_share_a_split_and_chunking_does_not_matter():
    img = encode(photo((60, 40)))
    recs = [rec("understand", image=img, question=f"q{i}?", answer="a", ref=f"r{i}") for i in range(5)]
    recs += [rec("edit", image=encode(photo((60, 41))), source_image=img, instruction="crop", ref="e")]
    whole = process_chunk(list(enumerate(recs)), PARAMS)
    parts = [process_chunk([(i, r)], PARAMS) for i, r in enumerate(recs)]
    assert whole.rows == [p.rows[0] for p in parts]
    cols = {name: i for i, name in enumerate(__import__("arm.data.stats", fromlist=["x"]).STATS_COLUMNS)}
    splits = {row[cols["split"]] for row in whole.rows}
    assert len(splits) == 1  # the edit's split follows its source image
    assert len({im.sha256 for im in whole.images}) == len(whole.images) == 2


def test_only_the_configured_raster_formats_parse_source_bytes(monkeypatch):
    """EPS would run Ghostscript on untrusted bytes: curation names it and never opens it."""
    from PIL import EpsImagePlugin

    def opened(*a, **k):
        raise AssertionError("the EPS plugin parsed source bytes")

    monkeypatch.setattr(EpsImagePlugin.EpsImageFile, "_open", opened)
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\nshowpage\n%%EOF\n"
    r = reject_reason(eps)
    assert r.reason == "unsupported_format" and "EPS images are not supported; use one of PNG" in r.detail
    tiff = encode(photo(), "TIFF")
    png_only = StatsParams(PARAMS.max_pixels, PARAMS.max_file_bytes, PARAMS.splits, ("PNG",))
    with pytest.raises(Rejected, match="TIFF images are not supported"):
        image_stats(tiff, png_only)
    assert image_stats(tiff, PARAMS).format == "TIFF"
