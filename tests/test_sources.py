"""Local data-source readers: Fashion-MNIST, image folders, Parquet and WebDataset shards."""

from __future__ import annotations

import gzip
import io
import json
import struct
import tarfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from arm.config import (
    DataConfig,
    FashionMnistSourceConfig,
    ImageFolderSourceConfig,
    ParquetSourceConfig,
    WebDatasetSourceConfig,
)
from arm.data.sources import SourceError, get_reader, iter_source
from arm.data.sources import fashion_mnist as fm
from arm.data.sources.files import Entry, Files, relpath_inside

DEBIAN_ROOT = "/usr/share/datasets/fashion-mnist"


def png(seed: int, size: int = 12) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def with_max_file_bytes(cfg, n: int):
    return cfg.model_copy(update={"data": cfg.data.model_copy(update={"max_file_bytes": n})})


# ----------------------------------------------------------------------------- fashion_mnist


def write_idx(root, subset: str, images: np.ndarray, labels: np.ndarray, magic_images: int = 0x803) -> None:
    root.mkdir(parents=True, exist_ok=True)
    n, h, w = images.shape
    with gzip.open(root / f"{subset}-images-idx3-ubyte.gz", "wb") as f:
        f.write(struct.pack(">IIII", magic_images, n, h, w) + images.astype(np.uint8).tobytes())
    with gzip.open(root / f"{subset}-labels-idx1-ubyte.gz", "wb") as f:
        f.write(struct.pack(">II", 0x801, n) + labels.astype(np.uint8).tobytes())


def check_fashion_answers(recs) -> None:
    for r in recs:
        name = r.meta["class"]
        assert name == fm.CLASSES[r.meta["label"]]
        if r.task == "generate":
            assert r.caption == f"a photo of {fm.PHRASES[name]}"
        elif r.question == "describe the image.":
            assert r.answer == f"a photo of {fm.PHRASES[name]}"
        elif r.question == "what is this?":
            assert r.answer == name
        elif r.question == "is this a kind of footwear?":
            assert r.answer == ("yes" if name in {"sandal", "sneaker", "ankle boot"} else "no")
        elif r.question == "is this a top?":
            assert r.answer == ("yes" if name in {"t-shirt", "pullover", "shirt"} else "no")
        else:
            asked = r.question[len("is this "):-1]
            assert r.answer == ("yes" if asked == fm.PHRASES[name] else "no"), r.question


def test_fashion_mnist_synthetic_idx_round_trip(tmp_path, micro_cfg):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (6, 28, 28), dtype=np.uint8)
    labels = np.array([9, 0, 5, 8, 1, 7])
    write_idx(tmp_path / "fm", "t10k", images, labels)
    src = FashionMnistSourceConfig(root=str(tmp_path / "fm"), subset="t10k", limit=None, vqa_per_image=3)
    recs = list(iter_source(src, micro_cfg))
    assert len(recs) == 6 * (2 + 3)
    assert [r.meta["label"] for r in recs[::5]] == labels.tolist()
    assert all(r.error is None and r.source == "fashion_mnist" for r in recs)
    assert [r.task for r in recs[:5]] == ["generate", "understand", "understand", "understand", "understand"]
    for i in range(6):
        block = recs[5 * i: 5 * i + 5]
        decoded = Image.open(io.BytesIO(block[0].image))
        assert decoded.size == (28, 28) and decoded.mode == "L"
        np.testing.assert_array_equal(np.asarray(decoded), images[i])
        assert len({r.image for r in block}) == 1
        assert len({r.question for r in block[2:]}) == 3  # distinct questions per image
    check_fashion_answers(recs)
    assert recs[0].caption == "a photo of an ankle boot"
    assert recs[5 * 3].meta == {"label": 8, "class": "bag"}


def test_fashion_mnist_limit_and_determinism(tmp_path, micro_cfg):
    write_idx(tmp_path, "train", np.zeros((10, 4, 4), np.uint8), np.arange(10))
    src = FashionMnistSourceConfig(root=str(tmp_path), limit=3, vqa_per_image=1)
    a, b = list(iter_source(src, micro_cfg)), list(iter_source(src, micro_cfg))
    assert len(a) == 3 * 3
    assert [(r.ref, r.question, r.answer) for r in a] == [(r.ref, r.question, r.answer) for r in b]
    assert list(iter_source(src.model_copy(update={"limit": 0}), micro_cfg)) == []


def test_fashion_mnist_debian_files(micro_cfg):
    src = FashionMnistSourceConfig(root=DEBIAN_ROOT, limit=12, vqa_per_image=4)
    recs = list(iter_source(src, micro_cfg))
    assert len(recs) == 12 * 6
    # Independent parse of the same files: labels and pixels must match exactly.
    with gzip.open(f"{DEBIAN_ROOT}/train-labels-idx1-ubyte.gz") as f:
        labels = np.frombuffer(f.read(8 + 12)[8:], np.uint8)
    with gzip.open(f"{DEBIAN_ROOT}/train-images-idx3-ubyte.gz") as f:
        pixels = np.frombuffer(f.read(16 + 12 * 784)[16:], np.uint8).reshape(12, 28, 28)
    assert labels[:4].tolist() == [9, 0, 0, 3]  # ankle boot, t-shirt, t-shirt, dress
    assert [r.meta["label"] for r in recs[::6]] == labels.tolist()
    for i in range(12):
        np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(recs[6 * i].image))), pixels[i])
    check_fashion_answers(recs)
    assert sum(r.answer == "yes" for r in recs) > 0 and sum(r.answer == "no" for r in recs) > 0


def test_fashion_mnist_missing_root_names_path_and_package(tmp_path, micro_cfg):
    missing = tmp_path / "nope"
    with pytest.raises(SourceError) as e:
        list(iter_source(FashionMnistSourceConfig(root=str(missing)), micro_cfg))
    assert str(missing) in str(e.value) and "dataset-fashion-mnist" in str(e.value)
    tmp_path.joinpath("only").mkdir()
    with pytest.raises(SourceError, match="train-images-idx3-ubyte.gz"):
        list(iter_source(FashionMnistSourceConfig(root=str(tmp_path / "only")), micro_cfg))


def test_fashion_mnist_corrupt_file(tmp_path, micro_cfg):
    write_idx(tmp_path, "train", np.zeros((2, 4, 4), np.uint8), np.zeros(2), magic_images=0x801)
    with pytest.raises(SourceError, match="not an IDX file"):
        list(iter_source(FashionMnistSourceConfig(root=str(tmp_path)), micro_cfg))
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(b"not gzip at all")
    with pytest.raises(SourceError, match="cannot read"):
        list(iter_source(FashionMnistSourceConfig(root=str(tmp_path)), micro_cfg))


# ----------------------------------------------------------------------------- image_folder


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "imgs"
    (root / "sub").mkdir(parents=True)
    files = {"a.png": png(1), "sub/b.png": png(2), "sub/c.jpg": b"not really a jpeg"}
    for rel, data in files.items():
        (root / rel).write_bytes(data)
    return root, files


def write_manifest(root, lines: list[str], name: str = "manifest.jsonl") -> None:
    (root / name).write_text("\n".join(lines) + "\n")


def test_image_folder_manifest(folder, micro_cfg):
    root, files = folder
    write_manifest(root, [
        json.dumps({"image": "a.png", "caption": "a noisy square"}),
        json.dumps({"image": "sub/b.png", "question": "what is it?", "answer": "noise"}),
        "",
        json.dumps({"image": "sub/gone.png", "caption": "lost"}),
        "{not json",
        json.dumps(["a.png", "x"]),
        json.dumps({"caption": "no image"}),
        json.dumps({"image": "../a.png", "caption": "escapes"}),
        json.dumps({"image": "a.png"}),
        json.dumps({"image": "a.png", "question": "only a question"}),
        json.dumps({"image": "sub/c.jpg", "caption": 7}),
        json.dumps({"image": "./sub/c.jpg", "caption": "not decoded here"}),
    ])
    src = ImageFolderSourceConfig(path=str(root), manifest="manifest.jsonl", task="understand")
    recs = list(iter_source(src, micro_cfg))
    assert len(recs) == 11  # every non-blank line is one record
    good = [r for r in recs if r.error is None]
    assert [(r.task, r.question, r.answer, r.meta["path"]) for r in good] == [
        ("understand", "describe the image.", "a noisy square", "a.png"),
        ("understand", "what is it?", "noise", "sub/b.png"),
        ("understand", "describe the image.", "not decoded here", "sub/c.jpg"),
    ]
    assert [r.image for r in good] == [files["a.png"], files["sub/b.png"], files["sub/c.jpg"]]
    errors = [r.error for r in recs if r.error is not None]
    assert errors[0] == f"missing_file: {root / 'sub/gone.png'}"
    assert errors[1].startswith("bad_manifest_row: line 5: invalid JSON")
    assert errors[2] == "bad_manifest_row: line 6: expected a JSON object, got list"
    assert errors[3] == "bad_manifest_row: line 7: missing or non-string 'file_name' or 'image'"
    assert errors[4].startswith("bad_manifest_row: line 8: image '../a.png' must be a relative path")
    assert errors[5] == "bad_manifest_row: line 9: needs 'text' or 'caption', or 'question' and 'answer'"
    assert errors[6] == "bad_manifest_row: line 10: 'question' and 'answer' must come together"
    assert errors[7] == "bad_manifest_row: line 11: 'caption' must be a string"
    assert recs[0].ref == f"{root / 'manifest.jsonl'}:1"


def test_image_folder_manifest_generate_task_and_absolute_manifest(folder, tmp_path, micro_cfg):
    root, files = folder
    elsewhere = tmp_path / "m.jsonl"
    elsewhere.write_text(json.dumps({"image": "sub/b.png", "caption": "grey static"}) + "\n")
    src = ImageFolderSourceConfig(path=str(root), manifest=str(elsewhere), task="generate")
    (rec,) = list(iter_source(src, micro_cfg))
    assert (rec.task, rec.caption, rec.image, rec.question) == ("generate", "grey static", files["sub/b.png"], None)
    with pytest.raises(SourceError, match="manifest .*missing.jsonl not found"):
        list(iter_source(src.model_copy(update={"manifest": "missing.jsonl"}), micro_cfg))


def test_image_folder_sidecars(folder, micro_cfg):
    root, files = folder
    (root / "a.txt").write_bytes(b"caption of a")
    (root / "sub/b.txt").write_bytes(b"\xff\xfe not utf-8")  # kept as bytes: curation rejects it
    (root / "orphan.txt").write_bytes(b"no image")
    (root / ".hidden.png").write_bytes(png(9))
    (root / "notes.md").write_bytes(b"ignored: not an image")
    src = ImageFolderSourceConfig(path=str(root), task="generate")
    recs = list(iter_source(src, micro_cfg))
    assert [(r.meta["path"], r.error is None) for r in recs] == [
        ("a.png", True), ("sub/b.png", True), ("sub/c.jpg", False), ("orphan.txt", False)]
    assert recs[0].caption == b"caption of a" and recs[0].image == files["a.png"]
    assert recs[1].caption == b"\xff\xfe not utf-8" and recs[1].image == files["sub/b.png"]
    assert recs[2].error == f"missing_caption: {root / 'sub/c.jpg'}: no sub/c.txt"
    assert recs[3].error.startswith("missing_file: no image for caption")
    understand = list(iter_source(src.model_copy(update={"task": "understand"}), micro_cfg))
    assert (understand[0].question, understand[0].answer) == ("describe the image.", b"caption of a")


def test_image_folder_too_large_is_not_read(folder, micro_cfg, monkeypatch):
    root, files = folder
    (root / "a.txt").write_bytes(b"small")
    (root / "sub/b.txt").write_bytes(b"small")
    big = root / "big.png"
    big.write_bytes(b"\x89PNG" + bytes(5000))
    (root / "big.txt").write_bytes(b"big one")
    read = Files.read
    seen: list[str] = []
    monkeypatch.setattr(Files, "read", lambda self, p: seen.append(p) or read(self, p))
    cfg = with_max_file_bytes(micro_cfg, 1000)
    recs = {r.meta["path"]: r for r in iter_source(ImageFolderSourceConfig(path=str(root)), cfg)}
    assert recs["big.png"].error == f"file_too_large: {big}: 5004 bytes > max_file_bytes 1000"
    assert str(big) not in seen
    assert recs["a.png"].error is None and recs["a.png"].image == files["a.png"]


def test_image_folder_reads_hugging_face_metadata_jsonl(tmp_path, micro_cfg):
    """An ImageFolder dataset as Hugging Face lays it out: the records are the rows `datasets` reads."""
    from datasets import load_dataset

    root = tmp_path / "hf"
    (root / "train" / "sub").mkdir(parents=True)
    (root / "test").mkdir()
    for rel, seed in (("train/a.png", 1), ("train/sub/b.png", 2), ("test/c.png", 3)):
        (root / rel).write_bytes(png(seed))
    (root / "train" / "a.txt").write_bytes(b"a sidecar, unused when metadata.jsonl is there")
    write_manifest(root / "train", [json.dumps({"file_name": "a.png", "text": "noise a", "label": 4}),
                                    json.dumps({"file_name": "sub/b.png", "text": "noise b", "label": 5})],
                   name="metadata.jsonl")
    write_manifest(root / "test", [json.dumps({"file_name": "c.png", "text": "noise c", "label": 6})],
                   name="metadata.jsonl")
    recs = list(iter_source(ImageFolderSourceConfig(path=str(root), task="generate"), micro_cfg))
    assert [(r.meta["path"], r.caption, r.error) for r in recs] == [
        ("test/c.png", "noise c", None), ("train/a.png", "noise a", None), ("train/sub/b.png", "noise b", None)]
    assert recs[0].ref == f"{root / 'test' / 'metadata.jsonl'}:1"
    hf = load_dataset("imagefolder", data_dir=str(root))
    ours = {r.caption: np.asarray(Image.open(io.BytesIO(r.image))) for r in recs}
    theirs = {row["text"]: np.asarray(row["image"]) for split in ("train", "test") for row in hf[split]}
    assert ours.keys() == theirs.keys()
    for text, pixels in ours.items():
        np.testing.assert_array_equal(pixels, theirs[text])

    write_manifest(root / "test", [json.dumps({"file_name": "c.png", "image": "c.png", "text": "x"}),
                                   json.dumps({"file_name": "c.png", "text": "x", "caption": "y"}),
                                   json.dumps({"file_name": "gone.png", "text": "x"}),
                                   json.dumps({"file_name": "c.png", "question": "q?", "answer": "a"})],
                   name="metadata.jsonl")
    recs = list(iter_source(ImageFolderSourceConfig(path=str(root / "test")), micro_cfg))
    assert [r.error for r in recs[:3]] == [
        "bad_manifest_row: line 1: both 'file_name' and 'image': give one",
        "bad_manifest_row: line 2: both 'text' and 'caption': give one",
        f"missing_file: {root / 'test' / 'gone.png'}"]
    assert (recs[3].question, recs[3].answer, recs[3].image) == ("q?", "a", png(3))


def test_image_folder_missing_or_empty_folder(tmp_path, micro_cfg):
    with pytest.raises(SourceError, match="folder not found"):
        list(iter_source(ImageFolderSourceConfig(path=str(tmp_path / "nope")), micro_cfg))
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="no images"):
        list(iter_source(ImageFolderSourceConfig(path=str(tmp_path / "empty")), micro_cfg))


# ----------------------------------------------------------------------------- parquet


def write_parquet_shards(root) -> dict[str, list]:
    """Two shards: plain binary/string columns, and the HF datasets struct layout with binary captions."""
    root.mkdir(parents=True, exist_ok=True)
    a_imgs = [png(10 + i) for i in range(5)]
    a_caps = [f"caption {i}" for i in range(5)]
    pq.write_table(pa.table({"image": pa.array(a_imgs, pa.binary()), "caption": a_caps, "extra": list(range(5))}),
                   root / "part-0.parquet", row_group_size=2)
    b_imgs = [{"bytes": png(20), "path": "x.png"}, None, {"bytes": None, "path": "y.png"},
              {"bytes": png(21), "path": None}]
    b_caps = [b"bytes caption", b"no image", b"unresolved", None]
    struct_t = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    pq.write_table(pa.table({"image": pa.array(b_imgs, struct_t), "caption": pa.array(b_caps, pa.binary())}),
                   root / "part-1.parquet", row_group_size=3)
    return {"a_imgs": a_imgs, "a_caps": a_caps, "b0": png(20)}


def test_parquet_reads_both_layouts_in_batches(tmp_path, micro_cfg, monkeypatch):
    data = write_parquet_shards(tmp_path / "pq")
    sizes: list[int] = []
    orig = pq.ParquetFile.iter_batches

    def spy(self, *a, **kw):
        for batch in orig(self, *a, **kw):
            sizes.append(batch.num_rows)
            yield batch

    monkeypatch.setattr(pq.ParquetFile, "iter_batches", spy)
    src = ParquetSourceConfig(path=str(tmp_path / "pq"), batch_rows=2)
    recs = list(iter_source(src, micro_cfg))
    assert max(sizes) == 2  # never more than batch_rows rows in memory
    assert len(recs) == 9
    assert [r.caption for r in recs[:5]] == data["a_caps"]
    assert [r.image for r in recs[:5]] == data["a_imgs"]
    assert all(r.task == "generate" and r.error is None for r in recs[:5])
    assert recs[5].caption == b"bytes caption" and recs[5].image == data["b0"]
    shard1 = str(tmp_path / "pq" / "part-1.parquet")
    assert recs[6].error == f"missing_image: {shard1}#1"
    assert recs[7].error.startswith("missing_image: no embedded bytes (path 'y.png'")
    assert recs[8].error == f"missing_caption: {shard1}#3"
    assert recs[2].ref == f"{tmp_path / 'pq' / 'part-0.parquet'}#2" and recs[2].meta["row"] == 2


def test_parquet_memory_is_one_window_not_the_shard(tmp_path, micro_cfg, monkeypatch):
    """Arrow's pre_buffer holds every row group it is asked for; the reader asks for a window."""
    from arm.data.sources import parquet

    monkeypatch.setattr(parquet, "WINDOW_BYTES", 2_000_000)  # two row groups of the ten
    n, groups = 200, 10
    blobs = [np.random.default_rng(i).bytes(50_000) for i in range(n)]  # incompressible
    pq.write_table(pa.table({"image": pa.array(blobs, pa.binary()), "caption": [f"c{i}" for i in range(n)]}),
                   tmp_path / "big.parquet", row_group_size=n // groups)
    size = (tmp_path / "big.parquet").stat().st_size
    base, peak, seen = pa.total_allocated_bytes(), 0, []
    for r in iter_source(ParquetSourceConfig(path=str(tmp_path / "big.parquet"), batch_rows=8), micro_cfg):
        peak = max(peak, pa.total_allocated_bytes() - base)
        seen.append(r.image)
    assert seen == blobs
    assert peak < size / 2  # buffering the whole shard would need more than `size`


def test_parquet_file_glob_and_understand(tmp_path, micro_cfg):
    data = write_parquet_shards(tmp_path / "pq")
    one = list(iter_source(ParquetSourceConfig(path=str(tmp_path / "pq" / "part-0.parquet"), task="understand"),
                           micro_cfg))
    assert [(r.question, r.answer) for r in one] == [("describe the image.", c) for c in data["a_caps"]]
    globbed = list(iter_source(ParquetSourceConfig(path=str(tmp_path / "pq" / "*-1.parquet")), micro_cfg))
    assert len(globbed) == 4
    with pytest.raises(SourceError, match="no such file or folder"):
        list(iter_source(ParquetSourceConfig(path=str(tmp_path / "absent")), micro_cfg))
    with pytest.raises(SourceError, match="no files"):
        list(iter_source(ParquetSourceConfig(path=str(tmp_path / "pq" / "*.nothing")), micro_cfg))


def test_parquet_bad_shard_and_missing_column(tmp_path, micro_cfg):
    write_parquet_shards(tmp_path / "pq")
    (tmp_path / "pq" / "part-0b.parquet").write_bytes(b"PAR1 garbage, not parquet")
    recs = list(iter_source(ParquetSourceConfig(path=str(tmp_path / "pq")), micro_cfg))
    bad = [r for r in recs if r.error and r.error.startswith("bad_shard")]
    assert len(recs) == 10 and len(bad) == 1 and "part-0b.parquet" in bad[0].error
    with pytest.raises(SourceError, match="has no column 'text'"):
        list(iter_source(ParquetSourceConfig(path=str(tmp_path / "pq" / "part-0.parquet"),
                                             caption_column="text"), micro_cfg))
    with pytest.raises(SourceError, match="expected binary or struct"):
        list(iter_source(ParquetSourceConfig(path=str(tmp_path / "pq" / "part-0.parquet"),
                                             image_column="extra"), micro_cfg))


def test_parquet_oversized_cell(tmp_path, micro_cfg):
    data = write_parquet_shards(tmp_path / "pq")
    limit = min(len(b) for b in data["a_imgs"]) - 1
    recs = list(iter_source(ParquetSourceConfig(path=str(tmp_path / "pq" / "part-0.parquet")),
                            with_max_file_bytes(micro_cfg, limit)))
    assert all(r.error.startswith("file_too_large:") for r in recs)


# ----------------------------------------------------------------------------- webdataset


def write_tar(path, members: list[tuple[str, bytes]], mode: str = "w") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, mode) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def wds_members() -> list[tuple[str, bytes]]:
    return [
        ("s/000.png", png(30)), ("s/000.txt", b"first"),
        ("s/001.jpg", png(31)), ("s/001.caption", b"second"), ("s/001.json", b"{}"),
        ("s/002.png", png(32)),                       # no caption
        ("s/003.txt", b"caption without image"),      # no image
        ("s/004.png", png(33)), ("s/004.jpg", png(34)), ("s/004.TXT", b"prefers jpg"),
        ("s/005.seg.png", png(35)), ("s/005.txt", b"multi-dot"),
        ("README", b"no extension: not a sample member"),
    ]


def test_webdataset_groups_by_key(tmp_path, micro_cfg):
    write_tar(tmp_path / "wds" / "shard-000.tar", wds_members())
    recs = list(iter_source(WebDatasetSourceConfig(path=str(tmp_path / "wds")), micro_cfg))
    shard = str(tmp_path / "wds" / "shard-000.tar")
    assert [r.meta["key"] for r in recs] == ["s/000", "s/001", "s/002", "s/003", "s/004", "s/005"]
    assert [(r.caption, r.image) for r in recs[:2]] == [(b"first", png(30)), (b"second", png(31))]
    assert recs[2].error.startswith(f"missing_caption: {shard}#s/002")
    assert recs[3].error.startswith(f"missing_image: {shard}#s/003")
    assert recs[4].image == png(34) and recs[4].caption == b"prefers jpg"  # jpg before png in image_ext
    assert recs[5].error.startswith("missing_image")  # "seg.png" is not "png"
    pngs_first = WebDatasetSourceConfig(path=str(tmp_path / "wds"), image_ext=["png", "jpg", "seg.png"],
                                        task="understand")
    recs = list(iter_source(pngs_first, micro_cfg))
    assert recs[4].image == png(33) and (recs[4].question, recs[4].answer) == ("describe the image.", b"prefers jpg")
    assert recs[5].image == png(35) and recs[5].error is None


def test_webdataset_shards_glob_gzip_and_bad_shard(tmp_path, micro_cfg):
    write_tar(tmp_path / "wds" / "a.tar.gz", [("k1.png", png(1)), ("k1.txt", b"one")], mode="w:gz")
    write_tar(tmp_path / "wds" / "b.tar", [("k2.png", png(2)), ("k2.txt", b"two")])
    (tmp_path / "wds" / "c.tar").write_bytes(b"this is not a tar archive" * 40)
    # A truncated shard: its first sample is complete, then the stream ends mid-member.
    write_tar(tmp_path / "trunc.tar", [("t1.png", png(3)), ("t1.txt", b"kept"), ("t2.png", png(4) * 50)])
    whole = (tmp_path / "trunc.tar").read_bytes()
    (tmp_path / "wds" / "d.tar").write_bytes(whole[: len(whole) // 2])
    recs = list(iter_source(WebDatasetSourceConfig(path=str(tmp_path / "wds" / "*.tar*")), micro_cfg))
    assert [(r.caption, r.error is None) for r in recs] == [
        (b"one", True), (b"two", True), (None, False), (b"kept", True), (None, False)]
    assert recs[2].error.startswith(f"bad_shard: {tmp_path / 'wds' / 'c.tar'}")
    assert recs[4].error.startswith(f"bad_shard: {tmp_path / 'wds' / 'd.tar'}")


def test_webdataset_truncated_at_header_or_garbled_header(tmp_path, micro_cfg):
    """tarfile alone would end these silently, as if the archive were complete."""
    members = [("k1.png", png(1)), ("k1.txt", b"one"), ("k2.png", png(2)), ("k2.txt", b"two")]
    write_tar(tmp_path / "whole.tar", members)
    whole = (tmp_path / "whole.tar").read_bytes()
    pad = lambda n: (n + 511) // 512 * 512  # noqa: E731
    k2_header = 512 + pad(len(png(1))) + 512 + pad(3)
    (tmp_path / "wds").mkdir()
    (tmp_path / "wds" / "cut.tar").write_bytes(whole[:k2_header])  # ends exactly at a header
    (tmp_path / "wds" / "garbled.tar").write_bytes(
        whole[:k2_header] + b"garbage!" * 64 + whole[k2_header + 512:])
    recs = list(iter_source(WebDatasetSourceConfig(path=str(tmp_path / "wds")), micro_cfg))
    assert [r.error.split(":")[0] if r.error else r.caption for r in recs] == ["bad_shard", "bad_shard"]
    assert "truncated or damaged" in recs[0].error and "cut.tar" in recs[0].error
    full = list(iter_source(WebDatasetSourceConfig(path=str(tmp_path / "whole.tar")), micro_cfg))
    assert [r.caption for r in full] == [b"one", b"two"]


def test_webdataset_oversized_member(tmp_path, micro_cfg):
    write_tar(tmp_path / "x.tar", [("k.png", bytes(3000)), ("k.txt", b"cap"), ("j.png", png(5)), ("j.txt", b"ok")])
    recs = list(iter_source(WebDatasetSourceConfig(path=str(tmp_path / "x.tar")), with_max_file_bytes(micro_cfg, 2000)))
    assert recs[0].error == f"file_too_large: {tmp_path / 'x.tar'}/k.png: 3000 bytes > max_file_bytes 2000"
    assert recs[1].error is None and recs[1].image == png(5)


# ----------------------------------------------------------------------------- shared


def test_readers_registered():
    for kind in ("shapes", "fashion_mnist", "image_folder", "parquet", "webdataset"):
        assert callable(get_reader(kind))
    assert DataConfig().max_file_bytes > 0


def test_path_helpers(tmp_path, micro_cfg):
    assert relpath_inside("a/./b.png") == "a/b.png"
    for bad in ("../x", "/abs", "a/../../x", "", ".", "s3://b/k"):
        assert relpath_inside(bad) is None
    assert Files("s3://b/p/", micro_cfg.storage).join("x.png") == "s3://b/p/x.png"
    files = Files("s3://b/p/*.tar", micro_cfg.storage)
    assert (files.path, files.url_of("b/p/a.tar")) == ("b/p/*.tar", "s3://b/p/a.tar")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.tar").write_bytes(b"x")
    (tmp_path / "d" / ".part.tar").write_bytes(b"hidden temporary")
    assert Files(str(tmp_path / "d"), micro_cfg.storage).expand((".tar",)) == [Entry(str(tmp_path / "d" / "a.tar"), 1)]
