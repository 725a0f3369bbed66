"""Image-text sets for tokenizer training and evaluation.

One entry per unique image (deduplicated by content sha) with every caption-like text that
describes it and, for shapes-world images, the ground-truth scene (for the oracle metric).
Pixels are decoded once and kept in memory when they fit in `cache_mb`; otherwise each batch
is read from the curated store, so the same code serves the tiny and the 7b preset.
`StepBatches` turns a step into its pixels; a DataLoader over it decodes in worker processes
(each with its own row-group cache) while the trainer runs the current step.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

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
    # Where each image lives in storage (a Parquet row group of the store), when known: the
    # trainer's streaming order visits images grouped by it (arm.tokenizer.train.BatchOrder).
    groups: torch.Tensor | None = field(default=None, repr=False)

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
        rows = torch.as_tensor(idx, dtype=torch.long)
        return ImageTextSet(
            [self.keys[i] for i in idx], [self.texts[i] for i in idx], [self.scenes[i] for i in idx],
            [self.labels[i] for i in idx], self.image_size, self.loader,
            self._cache[rows] if self._cache is not None else None,
            self.groups[rows] if self.groups is not None else None,
        )

    def where(self, predicate: Callable[[int], bool]) -> "ImageTextSet":
        return self.subset([i for i in range(len(self)) if predicate(i)])

    def all_texts(self) -> list[str]:
        return sorted({t for ts in self.texts for t in ts})


class StepBatches(Dataset):
    """Item `step`: uint8 [b, 3, S, S] pixels of the rows `rows(step)` (this process's slice of
    that step's batch), loaded wherever the item is (a DataLoader worker decodes the PNGs)."""

    def __init__(self, images: ImageTextSet, rows: Callable[[int], torch.Tensor]):
        self.images, self.rows = images, rows

    def __getitem__(self, step: int) -> torch.Tensor:
        return self.images.pixels(self.rows(step))


def step_loader(images: ImageTextSet, rows: Callable[[int], torch.Tensor], steps: range, workers: int,
                seed: int, pin_memory: bool = False) -> DataLoader:
    """The pixels of `steps` in order; `workers` processes load the next ones ahead (0: in this one).
    Its own seeded generator: creating the iterator draws a base seed, which must not come from
    the global RNG (a resumed run would then draw at a different point of the stream)."""
    return DataLoader(StepBatches(images, rows), batch_size=None, sampler=steps, num_workers=workers,
                      prefetch_factor=4 if workers else None, pin_memory=pin_memory,
                      generator=torch.Generator().manual_seed(seed))


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


def store_sets(store_root: str | Path, image_size: int, splits: Sequence[str] = ("train", "val"),
               cache_row_groups: int = 16) -> dict[str, ImageTextSet]:
    """Per split, the unique images of the curated store with their captions and scenes, and
    the row group of each (`groups`); the loader keeps `cache_row_groups` row groups in memory
    (per process).

    An image that appears in a held-out split (val/test) is never put in train, so held-out
    metrics never score an image the tokenizer was trained on.
    """
    from arm.data.store import CuratedStore

    root = Path(store_root)
    if not root.exists():
        raise FileNotFoundError(f"curated store {root} not found: run `arm curate` first")
    store = CuratedStore(root, cache_row_groups=cache_row_groups)
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
    group_of = _row_groups(store)
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
            groups=torch.tensor([group_of.get(s, -1) for s in shas], dtype=torch.long),
        )
    return out


def _row_groups(store) -> dict[str, int]:
    """sha -> a number per Parquet row group of the image shards (the writer's rows per group;
    a locality key for the streaming order, so an approximate group costs reads, never images)."""
    from arm.data.store import ROW_GROUP_ROWS

    rows = store.con.execute("SELECT sha256, shard, row FROM images").fetchall()
    return {sha: shard * (1 << 32) + row // ROW_GROUP_ROWS for sha, shard, row in rows}


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

    from arm.data import holdout, shapes
    from arm.data.sources import fashion_mnist as fm

    rng = random.Random(f"tokenizer-generated:{seed}")
    keys, texts, scenes, labels, pixels = [], [], [], [], []
    for i in range(n_scenes):
        scene = holdout.training_scene(rng, world)
        keys.append(f"shapes:{seed}:{i}")
        texts.append([shapes.caption(scene, world.grid)])
        scenes.append(scene.to_json())
        labels.append(None)
        pixels.append(pil_to_uint8(shapes.render(scene, world), image_size))
        edit = holdout.training_edit(rng, scene, world) if edits else None
        if edit is not None:
            target = edit[1]
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
