"""Image-text sets for tokenizer training and evaluation.

One entry per unique image (deduplicated by content sha) with every caption-like text that
describes it and, for shapes-world images, the ground-truth scene (for the oracle metric).
Pixels are decoded once and kept in memory when they fit in `cache_mb`; otherwise each batch
is read from the curated store, so the same code serves the tiny and the 7b preset.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from arm.tokenizer.images import pil_to_uint8

Loader = Callable[[Sequence[str]], np.ndarray]  # keys -> uint8 [b, 3, S, S]

# Understanding questions whose answer is a caption of the whole image.
DESCRIBE_QUESTIONS = frozenset({"describe the image.", "describe the image", "describe this image.", "what is in the image?"})


@dataclass
class ImageTextSet:
    keys: list[str]  # content sha (or a synthetic id)
    texts: list[list[str]]  # caption-like texts of each image; may be empty
    scenes: list[list[dict] | None]  # shapes-world scene of each image, when known
    labels: list[int | None]  # class label (Fashion-MNIST), when known
    image_size: int
    loader: Loader
    _cache: torch.Tensor | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.keys)

    def pixels(self, indices: Sequence[int]) -> torch.Tensor:
        """uint8 [b, 3, S, S] of the given entries."""
        if self._cache is not None:
            return self._cache[torch.as_tensor(list(indices), dtype=torch.long)]
        return torch.from_numpy(self.loader([self.keys[i] for i in indices]))

    def preload(self, cache_mb: int, batch: int = 512) -> bool:
        """Decodes every image once into memory if the set fits in `cache_mb`."""
        need = len(self) * 3 * self.image_size * self.image_size
        if self._cache is not None or need > cache_mb * 1024 * 1024 or not len(self):
            return self._cache is not None
        parts = [torch.from_numpy(self.loader(self.keys[i : i + batch])) for i in range(0, len(self), batch)]
        self._cache = torch.cat(parts)
        return True

    def subset(self, indices: Sequence[int]) -> "ImageTextSet":
        idx = list(indices)
        cache = self._cache[torch.as_tensor(idx, dtype=torch.long)] if self._cache is not None else None
        return ImageTextSet(
            [self.keys[i] for i in idx], [self.texts[i] for i in idx], [self.scenes[i] for i in idx],
            [self.labels[i] for i in idx], self.image_size, self.loader, cache,
        )

    def where(self, predicate: Callable[[int], bool]) -> "ImageTextSet":
        return self.subset([i for i in range(len(self)) if predicate(i)])

    def all_texts(self) -> list[str]:
        return sorted({t for ts in self.texts for t in ts})


def scene_class_count(world) -> int:
    """Classes of `scene_cell_states`: the world's cell states plus "not the shapes world"."""
    from arm.data.shapes import cell_state_count

    return cell_state_count(world) + 1


def scene_cell_states(images: ImageTextSet, world) -> torch.Tensor:
    """[N, grid*grid] cell classes (arm.data.shapes.cell_states) of every image.

    Every cell of an image without a scene graph gets the last class ("not the shapes world"):
    natural-image patches then never share a code with a cell state, whose decoded template
    they would blur.
    """
    from arm.data.shapes import Scene, cell_states

    out = torch.full((len(images), world.grid * world.grid), scene_class_count(world) - 1, dtype=torch.long)
    for i, scene in enumerate(images.scenes):
        if scene is not None:
            out[i] = torch.tensor(cell_states(Scene.from_json(scene), world))
    return out


# ----------------------------------------------------------------------------- the curated store


def _meta(raw) -> dict:
    if isinstance(raw, dict):
        return raw
    if not raw:
        return {}
    try:
        return json.loads(raw)
    except (TypeError, ValueError):
        return {}


def _text(v) -> str | None:
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return None
    v = str(v).strip()
    return v or None


def store_sets(store_root: str | Path, image_size: int, splits: Sequence[str] = ("train", "val")) -> dict[str, ImageTextSet]:
    """Per split, the unique images of the curated store with their captions and scenes.

    An image that appears in a held-out split (val/test) is never put in train, so held-out
    metrics never score an image the tokenizer was trained on.
    """
    from arm.data.store import CuratedStore

    root = Path(store_root)
    if not root.exists():
        raise FileNotFoundError(f"curated store {root} not found: run `arm curate` first")
    store = CuratedStore(root)
    df = store.samples()
    if df.empty:
        raise ValueError(f"curated store {root} has no samples")

    entries: dict[str, dict] = {}  # sha -> {"texts": set, "scene": ..., "label": ..., "splits": set}

    def add(sha, split, text=None, scene=None, label=None) -> None:
        if not sha or (isinstance(sha, float) and np.isnan(sha)):
            return
        e = entries.setdefault(sha, {"texts": set(), "scene": None, "label": None, "splits": set()})
        e["splits"].add(split)
        if text:
            e["texts"].add(text)
        if scene is not None and e["scene"] is None:
            e["scene"] = scene
        if label is not None and e["label"] is None:
            e["label"] = int(label)

    for row in df.itertuples(index=False):
        meta = _meta(getattr(row, "meta", None))
        task, split = row.task, row.split
        label = meta.get("label")
        if task == "edit":
            add(row.image_sha, split, scene=meta.get("target_scene"))
            add(row.source_image_sha, split, scene=meta.get("scene"))
            continue
        text = None
        if task == "generate":
            text = _text(row.caption)
        elif task == "understand":
            q = (_text(row.question) or "").lower()
            text = _text(row.answer) if q in DESCRIBE_QUESTIONS else _text(getattr(row, "caption", None))
        add(row.image_sha, split, text=text, scene=meta.get("scene"), label=label)

    held_out = {"val", "test"}
    loader = _store_loader(store, image_size)
    out: dict[str, ImageTextSet] = {}
    for split in splits:
        if split == "train":
            shas = sorted(s for s, e in entries.items() if "train" in e["splits"] and not (e["splits"] & held_out))
        else:
            shas = sorted(s for s, e in entries.items() if split in e["splits"])
        out[split] = ImageTextSet(
            keys=shas,
            texts=[sorted(entries[s]["texts"]) for s in shas],
            scenes=[entries[s]["scene"] for s in shas],
            labels=[entries[s]["label"] for s in shas],
            image_size=image_size,
            loader=loader,
        )
    return out


def _store_loader(store, image_size: int) -> Loader:
    def load(keys: Sequence[str]) -> np.ndarray:
        images = store.load_images(list(keys))
        return np.stack([pil_to_uint8(im, image_size) for im in images])

    return load


# ----------------------------------------------------------------------------- generated (no store)


def generated_set(world, image_size: int, n_scenes: int, n_fashion: int, seed: int,
                  fashion_root: str | None = None, fashion_subset: str = "train", edits: bool = True) -> ImageTextSet:
    """Shapes scenes (+ edit targets) and Fashion-MNIST images with the curated sources' captions.

    Used by tests and for development without a curated store; `arm train-tokenizer` reads the store.
    """
    from PIL import Image

    from arm.data import shapes
    from arm.data.sources import fashion_mnist as fm

    rng = random.Random(f"tokenizer-generated:{seed}")
    keys, texts, scenes, labels, pixels = [], [], [], [], []
    for i in range(n_scenes):
        scene = shapes.random_scene(rng, world)
        keys.append(f"shapes:{seed}:{i}")
        texts.append([shapes.caption(scene, world.grid)])
        scenes.append(scene.to_json())
        labels.append(None)
        pixels.append(pil_to_uint8(shapes.render(scene, world), image_size))
        if edits:
            _, target, _ = shapes.random_edit(rng, scene, world)
            keys.append(f"shapes:{seed}:{i}:edit")
            texts.append([])
            scenes.append(target.to_json())
            labels.append(None)
            pixels.append(pil_to_uint8(shapes.render(target, world), image_size))
    if n_fashion:
        root = Path(fashion_root or "/usr/share/datasets/fashion-mnist")
        images, fl = fm.read_idx(root / f"{fashion_subset}-images-idx3-ubyte.gz",
                                 root / f"{fashion_subset}-labels-idx1-ubyte.gz", n_fashion)
        for j in range(len(fl)):
            keys.append(f"fashion_mnist:{fashion_subset}:{j}")
            texts.append([fm.caption(int(fl[j]))])
            scenes.append(None)
            labels.append(int(fl[j]))
            pixels.append(pil_to_uint8(Image.fromarray(images[j]), image_size))
    cache = torch.from_numpy(np.stack(pixels))
    index = {k: i for i, k in enumerate(keys)}

    def load(ks: Sequence[str]) -> np.ndarray:
        return cache[[index[k] for k in ks]].numpy()

    return ImageTextSet(keys, texts, scenes, labels, image_size, load, cache)
