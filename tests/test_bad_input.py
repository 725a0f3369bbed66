"""Bad input through the whole curate stage (issue 2, item 8).

One run over a folder of broken, odd and duplicate files, a manifest with a row pointing at a
missing file, an S3 source whose endpoint refuses connections, and a small shapes world: each
bad record is rejected with its own reason, the odd-but-valid images are kept and correctly
converted, nothing else is lost (counts reconcile per source), and the run completes.
"""

from __future__ import annotations

import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from arm.config import load_config
from arm.data.curate import curate
from arm.data.store import CuratedStore

REPO = Path(__file__).resolve().parents[1]


def bomb_png(side: int = 20000) -> bytes:
    """A valid 1-bit PNG of side x side pixels, ~50 kB on disk, 400 Mpx once decoded."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\x00" * (1 + (side + 7) // 8)
    comp = zlib.compressobj(9)
    idat = b"".join(comp.compress(row) for _ in range(side)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


@pytest.fixture(scope="module")
def bad_run(tmp_path_factory):
    from skimage import data as skdata

    tmp = tmp_path_factory.mktemp("bad_input")
    folder = tmp / "folder"
    folder.mkdir()
    photo = Image.fromarray(skdata.coffee()).resize((150, 100), Image.Resampling.LANCZOS)
    cat = Image.fromarray(skdata.chelsea()).resize((90, 60), Image.Resampling.LANCZOS)

    def put(name: str, data: bytes, caption: bytes | str | None = "a picture") -> None:
        (folder / name).write_bytes(data)
        if caption is not None:
            side = folder / (name.rsplit(".", 1)[0] + ".txt")
            side.write_bytes(caption if isinstance(caption, bytes) else caption.encode())

    jpeg = encode(photo, "JPEG", quality=90)
    put("ok.png", encode(cat, "PNG"), "a cat")
    put("truncated.jpg", jpeg[: len(jpeg) // 2])
    put("zero.png", b"")
    put("text_named.png", b"just some text, no pixels here\n")
    put("bomb.png", bomb_png())
    cmyk = Image.new("CMYK", (40, 30), (255, 0, 0, 0))
    cmyk.paste((0, 0, 0, 255), (0, 0, 20, 30))
    put("cmyk.tif", encode(cmyk, "TIFF"))
    put("gray16.png", encode(Image.fromarray(np.tile(np.array([[0, 65535, 32896, 2570]], np.uint16), (20, 10))), "PNG"))
    pal = Image.new("P", (24, 24), 0)
    pal.putpalette([0, 0, 0, 200, 100, 50, 10, 20, 230] + [0] * 759)
    for x in range(24):
        for y in range(24):
            pal.putpixel((x, y), (x // 8) % 3)
    put("palette.png", encode(pal, "PNG", transparency=0))
    rgba = Image.new("RGBA", (24, 24), (255, 0, 0, 128))
    rgba.paste((0, 0, 255, 255), (0, 0, 12, 24))
    put("rgba.png", encode(rgba, "PNG"))
    exif = Image.Exif()
    exif[0x0112] = 6
    put("rotated.jpg", encode(photo, "JPEG", quality=90, exif=exif.tobytes()), "a cup of coffee")
    put("bad_utf8.png", encode(photo.rotate(180), "PNG"), b"caf\xe9 au lait")  # latin-1, not UTF-8
    put("empty_caption.png", encode(photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT), "PNG"), "  \n")
    put("zz_duplicate.png", encode(cat, "PNG"), "a cat")  # the same picture and caption as ok.png
    put("no_caption.png", encode(cat.rotate(90, expand=True), "PNG"), None)
    (folder / "orphan.txt").write_text("a caption whose image is gone")

    manifest_dir = tmp / "manifest"
    manifest_dir.mkdir()
    (manifest_dir / "good.png").write_bytes(encode(photo.rotate(90, expand=True), "PNG"))
    (manifest_dir / "rows.jsonl").write_text(
        json.dumps({"image": "good.png", "question": "what is in the cup?", "answer": "coffee"}) + "\n"
        + json.dumps({"image": "missing.png", "caption": "never seen"}) + "\n")

    import socket

    with socket.socket() as s:  # a port that was free a moment ago: connecting is refused
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    sources = [
        {"type": "image_folder", "name": "folder", "path": str(folder), "task": "generate",
         "image_ext": ["png", "jpg", "tif"]},
        {"type": "image_folder", "name": "manifest", "path": str(manifest_dir), "manifest": "rows.jsonl"},
        {"type": "parquet", "name": "s3_down", "path": "s3://arm-missing-bucket/shards/"},
        {"type": "shapes", "name": "shapes", "n_scenes": 20},
    ]
    cfg = load_config(REPO / "params.yaml", preset="micro", overrides=[
        f"data.store={tmp / 'store'}", f"data.metrics={tmp / 'curate.json'}", "data.sources=" + json.dumps(sources),
        f"storage.endpoint_url={closed}", "storage.connect_timeout_s=1.0", "storage.max_attempts=1"])
    mp = pytest.MonkeyPatch()
    mp.setenv("AWS_ACCESS_KEY_ID", "arm-test-key")
    mp.setenv("AWS_SECRET_ACCESS_KEY", "arm-test-secret")
    try:
        metrics = curate(cfg)
    finally:
        mp.undo()
    store = CuratedStore(cfg.data.store)
    yield cfg, metrics, store, folder
    store.close()


def by_name(df) -> dict:
    return {Path(r.split("#")[0].split(":")[0] if r.startswith("s3://") else r).name: row
            for r, row in zip(df["ref"], df.to_dict("records"))}


def test_each_bad_file_is_rejected_with_its_reason(bad_run):
    _, _, store, _ = bad_run
    rej = store.rejections()
    folder = {Path(r).name: (reason, detail) for r, reason, detail, source in
              rej[["ref", "reason", "detail", "source"]].itertuples(index=False) if source == "folder"}
    assert folder["truncated.jpg"][0] == "corrupt_image" and "truncated" in folder["truncated.jpg"][1]
    assert folder["zero.png"] == ("empty_file", "image: zero bytes")
    assert folder["text_named.png"][0] == "not_an_image"
    # refused by Pillow's decompression-bomb guard while parsing the header (arm.data.images)
    assert folder["bomb.png"][0] == "oversized" and "400000000 pixels" in folder["bomb.png"][1]
    assert folder["bad_utf8.png"][0] == "bad_utf8" and folder["bad_utf8.png"][1].startswith("caption:")
    assert folder["empty_caption.png"] == ("empty_text", "caption: empty (required for task generate)")
    assert folder["zz_duplicate.png"][0] == "duplicate" and "ok.png" in folder["zz_duplicate.png"][1]
    assert folder["no_caption.png"][0] == "missing_caption"
    assert folder["orphan.txt"][0] == "missing_file"
    assert len(folder) == 9
    assert set(rej[rej.source == "folder"]["stage"]) == {"read", "stats", "dedup"}

    manifest = rej[rej.source == "manifest"]
    assert list(manifest["reason"]) == ["missing_file"] and "missing.png" in manifest["detail"].iloc[0]

    s3 = rej[rej.source == "s3_down"]
    assert list(s3["reason"]) == ["source_unreachable"]
    assert "s3://arm-missing-bucket/shards/" in s3["detail"].iloc[0] and "cannot connect" in s3["detail"].iloc[0]


def test_odd_but_valid_images_are_kept_and_converted(bad_run):
    _, _, store, _ = bad_run
    kept = store.samples()
    folder = {Path(r).name: row for r, row in zip(kept["ref"], kept.to_dict("records")) if row["source"] == "folder"}
    assert set(folder) == {"ok.png", "cmyk.tif", "gray16.png", "palette.png", "rgba.png", "rotated.jpg"}

    def px(name):
        return np.asarray(store.load_image(folder[name]["image_sha"])).astype(int)

    cmyk = px("cmyk.tif")
    assert folder["cmyk.tif"]["image_mode"] == "CMYK"
    assert tuple(cmyk[5, 30]) == (0, 255, 255) and tuple(cmyk[5, 5]) == (0, 0, 0)
    gray = px("gray16.png")
    assert gray[0, :4, 0].tolist() == [0, 255, 128, 10] and (gray[..., 0] == gray[..., 1]).all()
    pal = px("palette.png")
    assert tuple(pal[3, 3]) == (255, 255, 255)  # transparent index on white
    assert tuple(pal[3, 11]) == (200, 100, 50) and tuple(pal[3, 20]) == (10, 20, 230)
    rgba = px("rgba.png")
    assert tuple(rgba[3, 3]) == (0, 0, 255)
    assert rgba[3, 20, 0] == 255 and abs(rgba[3, 20, 1] - 127) <= 1 and abs(rgba[3, 20, 2] - 127) <= 1
    rot = folder["rotated.jpg"]
    assert (rot["width"], rot["height"]) == (100, 150)  # stored upright: EXIF orientation 6 applied
    assert store.load_image(rot["image_sha"]).size == (100, 150)
    assert len(store.samples(task="understand").query("source == 'manifest'")) == 1


def test_nothing_else_is_lost_and_the_run_completes(bad_run):
    _, m, store, _ = bad_run
    for name, c in m["by_source"].items():
        assert c["in"] == c["kept"] + c["rejected"] and c["reconciled"], name
    assert m["by_source"]["folder"]["in"] == 15  # 14 images + 1 orphan caption
    assert m["by_source"]["manifest"] == {"in": 2, "kept": 1, "rejected": 1, "reconciled": True,
                                          "rejected_by_reason": {"missing_file": 1}}
    assert m["by_source"]["s3_down"]["in"] == 1
    shapes = m["by_source"]["shapes"]
    assert set(shapes["rejected_by_reason"]) <= {"duplicate"} and shapes["kept"] > 80
    s = store.summary()
    assert s["samples"] == m["n_kept"] and s["rejected"] == m["n_rejected"]
    assert m["n_in"] == m["n_kept"] + m["n_rejected"]


def test_s3_sources_on_a_real_server_missing_bucket_is_one_rejection(tmp_path, moto_server, monkeypatch):
    """Against moto's S3 on 127.0.0.1: a shard in a bucket is curated, a bucket that does not
    exist becomes one `source_unreachable` rejection, and the run completes."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    moto_server.use(monkeypatch)
    bucket = moto_server.new_bucket()
    rng = np.random.default_rng(1)
    images = [encode(Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)), "PNG") for _ in range(3)]
    shard = tmp_path / "part-0.parquet"
    pq.write_table(pa.table({"image": images + [b""], "caption": ["one", "two", "three", "four"]}), shard)
    url = moto_server.upload(shard, bucket, "shards")
    sources = [
        {"type": "parquet", "name": "s3_ok", "path": url},
        {"type": "parquet", "name": "s3_no_bucket", "path": "s3://arm-no-such-bucket-xyz/shards/"},
    ]
    cfg = load_config(REPO / "params.yaml", preset="micro", overrides=[
        f"data.store={tmp_path / 'store'}", f"data.metrics={tmp_path / 'curate.json'}",
        "data.sources=" + json.dumps(sources), f"storage.endpoint_url={moto_server.endpoint_url}"])
    m = curate(cfg)
    assert m["by_source"]["s3_ok"] == {"in": 4, "kept": 3, "rejected": 1, "reconciled": True,
                                       "rejected_by_reason": {"empty_file": 1}}
    assert m["by_source"]["s3_no_bucket"]["rejected_by_reason"] == {"source_unreachable": 1}
    with CuratedStore(cfg.data.store) as store:
        r = store.rejections()
        detail = r[r.source == "s3_no_bucket"]["detail"].iloc[0]
        assert "arm-no-such-bucket-xyz" in detail and "does not exist" in detail
        kept = store.samples()
        assert list(kept["caption"]) == ["one", "two", "three"] and kept["ref"].str.startswith(url).all()
        assert [np.asarray(im).shape for im in store.load_images(list(kept["image_sha"]))] == [(16, 16, 3)] * 3
