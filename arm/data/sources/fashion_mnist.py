"""Fashion-MNIST from Debian's `dataset-fashion-mnist` (gzipped IDX files): offline real images.

Per image: a caption for generation, a description and `vqa_per_image` question/answer pairs for
understanding. Only the first `limit` images are decompressed, so small presets stay fast.
"""

from __future__ import annotations

import gzip
import random
import struct
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from arm.config import ArmConfig, FashionMnistSourceConfig
from arm.data.records import RawRecord
from arm.data.sources import SourceError, register
from arm.data.sources.shapes import png_bytes

DEBIAN_PACKAGE = "dataset-fashion-mnist"

# Label order of the dataset; names as a person would say them.
CLASSES: tuple[str, ...] = (
    "t-shirt", "trousers", "pullover", "dress", "coat",
    "sandal", "shirt", "sneaker", "bag", "ankle boot",
)
# Noun phrases for captions ("a photo of a pair of trousers").
PHRASES: dict[str, str] = {
    "t-shirt": "a t-shirt", "trousers": "a pair of trousers", "pullover": "a pullover",
    "dress": "a dress", "coat": "a coat", "sandal": "a sandal", "shirt": "a shirt",
    "sneaker": "a sneaker", "bag": "a bag", "ankle boot": "an ankle boot",
}
# Groups with crisp membership only (a dress is neither a top nor trousers), so yes/no is exact.
GROUPS: dict[str, frozenset[str]] = {
    "footwear": frozenset({"sandal", "sneaker", "ankle boot"}),
    "top": frozenset({"t-shirt", "pullover", "shirt"}),
}
QUESTION_KINDS = ("what", "footwear", "top", "is_class")

_IMAGES_MAGIC = 0x00000803  # unsigned byte, 3 dimensions
_LABELS_MAGIC = 0x00000801  # unsigned byte, 1 dimension


def caption(label: int) -> str:
    return f"a photo of {PHRASES[CLASSES[label]]}"


def question_answer(kind: str, label: int, rng: random.Random) -> tuple[str, str]:
    name = CLASSES[label]
    if kind == "what":
        return "what is this?", name
    if kind in GROUPS:
        article = "a kind of footwear" if kind == "footwear" else "a top"
        return f"is this {article}?", "yes" if name in GROUPS[kind] else "no"
    if kind == "is_class":
        # Half the time ask about the true class, so "yes" and "no" are equally likely.
        other = name if rng.random() < 0.5 else rng.choice([c for c in CLASSES if c != name])
        return f"is this {PHRASES[other]}?", "yes" if other == name else "no"
    raise ValueError(f"unknown question kind {kind!r}")


def _files(src: FashionMnistSourceConfig) -> tuple[Path, Path]:
    root = Path(src.root)
    hint = f"install the Debian package {DEBIAN_PACKAGE} (apt-get install {DEBIAN_PACKAGE}) or set `root`"
    if not root.is_dir():
        raise SourceError(f"fashion_mnist source {src.name!r}: {root} not found; {hint}")
    images = root / f"{src.subset}-images-idx3-ubyte.gz"
    labels = root / f"{src.subset}-labels-idx1-ubyte.gz"
    for f in (images, labels):
        if not f.is_file():
            raise SourceError(f"fashion_mnist source {src.name!r}: {f} not found; {hint}")
    return images, labels


def _read_header(f, path: Path, magic: int) -> tuple[int, ...]:
    head = f.read(4)
    if len(head) != 4 or struct.unpack(">I", head)[0] != magic:
        raise SourceError(f"{path}: not an IDX file of the expected kind (magic {magic:#010x})")
    ndim = magic & 0xFF
    raw = f.read(4 * ndim)
    if len(raw) != 4 * ndim:
        raise SourceError(f"{path}: truncated IDX header")
    return struct.unpack(f">{ndim}I", raw)


def read_idx(images_path: Path, labels_path: Path, limit: int | None) -> tuple[np.ndarray, np.ndarray]:
    """The first `limit` images (N, H, W) uint8 and labels (N,); only that much is decompressed."""
    try:
        with gzip.open(labels_path, "rb") as f:
            (n_labels,) = _read_header(f, labels_path, _LABELS_MAGIC)
            n = n_labels if limit is None else min(limit, n_labels)
            labels = np.frombuffer(f.read(n), dtype=np.uint8)
        with gzip.open(images_path, "rb") as f:
            n_images, h, w = _read_header(f, images_path, _IMAGES_MAGIC)
            if n_images != n_labels:
                raise SourceError(f"{images_path}: {n_images} images but {labels_path} has {n_labels} labels")
            images = np.frombuffer(f.read(n * h * w), dtype=np.uint8)
    except (OSError, EOFError) as e:  # gzip.BadGzipFile is an OSError
        raise SourceError(f"{images_path.parent}: cannot read Fashion-MNIST files: {e}") from e
    if len(labels) != n or len(images) != n * h * w:
        raise SourceError(f"{images_path.parent}: Fashion-MNIST files are truncated")
    if labels.size and int(labels.max()) >= len(CLASSES):
        raise SourceError(f"{labels_path}: label {int(labels.max())} outside 0..{len(CLASSES) - 1}")
    return images.reshape(n, h, w), labels


def image_records(src: FashionMnistSourceConfig, cfg: ArmConfig, subset_index: int,
                  pixels: np.ndarray, label: int) -> list[RawRecord]:
    """All records of one image; a pure function of (seed, subset, index, pixels, label)."""
    rng = random.Random(f"fashion_mnist:{cfg.seed}:{src.subset}:{subset_index}")
    image = png_bytes(Image.fromarray(np.ascontiguousarray(pixels, dtype=np.uint8)))  # 2-D uint8: mode L
    ref = f"fashion_mnist:{src.subset}:{subset_index}"
    meta = {"label": int(label), "class": CLASSES[label]}
    text = caption(label)
    recs = [
        RawRecord(source=src.name, ref=f"{ref}:caption", task="generate", image=image, caption=text,
                  meta=dict(meta)),
        RawRecord(source=src.name, ref=f"{ref}:describe", task="understand", image=image,
                  question="describe the image.", answer=text, meta=dict(meta)),
    ]
    kinds = rng.sample(QUESTION_KINDS, k=min(src.vqa_per_image, len(QUESTION_KINDS)))
    for j, kind in enumerate(kinds):
        q, a = question_answer(kind, label, rng)
        recs.append(RawRecord(source=src.name, ref=f"{ref}:vqa{j}", task="understand", image=image,
                              question=q, answer=a, meta=dict(meta)))
    return recs


@register("fashion_mnist")
def read_fashion_mnist(src: FashionMnistSourceConfig, cfg: ArmConfig) -> Iterator[RawRecord]:
    images_path, labels_path = _files(src)
    images, labels = read_idx(images_path, labels_path, src.limit)
    for i in range(len(labels)):
        yield from image_records(src, cfg, i, images[i], int(labels[i]))
