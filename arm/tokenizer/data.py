"""Image-text sets for tokenizer training and evaluation.

One entry per unique image (deduplicated by content sha) with every caption-like text that
describes it and, for shapes-world images, the ground-truth scene (for the oracle metric).
Pixels are decoded once and kept in memory when they fit in `cache_mb`; otherwise each batch
is read from the curated store, so the same code serves the tiny and the 7b preset.
`StepBatches` turns a step into its pixels; a DataLoader over it decodes in worker processes
(each with its own row-group cache) while the trainer runs the current step.

A tokenizer with aspect buckets trains on `bucket_parts`: one set per bucket, each image framed
at its own bucket's pixel size (arm.tokenizer.buckets), from each image's stored size.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from arm.tokenizer.buckets import Buckets
from arm.tokenizer.images import Size, pil_to_uint8

Loader = Callable[[Sequence[str]], np.ndarray]  # keys -> uint8 [b, 3, H, W]
Originals = Callable[[Sequence[str]], list[Image.Image]]  # keys -> the stored images themselves
IGNORE = -100  # a scene-cell target the loss skips (F.cross_entropy's ignore_index)

# Understanding questions whose answer is a caption of the whole image.
DESCRIBE_QUESTIONS = frozenset({"describe the image.", "describe the image", "describe this image.", "what is in the image?"})


@dataclass
class ImageTextSet:
    keys: list[str]  # content sha (or a synthetic id)
    texts: list[list[str]]  # caption-like texts of each image; may be empty
    scenes: list[list[dict] | None]  # shapes-world scene of each image, when known
    labels: list[int | None]  # class label (Fashion-MNIST), when known
    image_size: Size  # the loader's pixels: S x S, or (height, width) for a bucket's set
    loader: Loader
    _cache: torch.Tensor | None = field(default=None, repr=False)
    # Where each image lives in storage (a Parquet row group of the store), when known: the
    # trainer's streaming order visits images grouped by it (arm.tokenizer.train.BatchOrder).
    groups: torch.Tensor | None = field(default=None, repr=False)
    # Each image's stored (width, height) and a loader of the stored images, when known: what
    # `bucket_parts` frames each image from, at its own bucket.
    sizes: list[tuple[int, int]] | None = field(default=None, repr=False)
    originals: Originals | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.keys)

    def pixels(self, indices: Sequence[int]) -> torch.Tensor:
        """uint8 [b, 3, H, W] of the given entries."""
        if self._cache is not None:
            return self._cache[torch.as_tensor(list(indices), dtype=torch.long)]
        return torch.from_numpy(self.loader([self.keys[i] for i in indices]))

    def preload(self, cache_mb: int, batch: int = 512) -> bool:
        """Decodes every image once into memory if the set fits in `cache_mb`."""
        h, w = (self.image_size, self.image_size) if isinstance(self.image_size, int) else self.image_size
        need = len(self) * 3 * h * w
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
            [self.sizes[i] for i in idx] if self.sizes is not None else None,
            self.originals,
        )

    def where(self, predicate: Callable[[int], bool]) -> "ImageTextSet":
        return self.subset([i for i in range(len(self)) if predicate(i)])

    def all_texts(self) -> list[str]:
        return sorted({t for ts in self.texts for t in ts})


class Part(NamedTuple):
    """The images of one aspect bucket: its grid, their rows in the whole set, and their set
    (framed at the grid's pixel size)."""

    grid: tuple[int, int]
    rows: torch.Tensor
    images: ImageTextSet


def bucket_parts(images: ImageTextSet, buckets: Buckets) -> list[Part]:
    """`images` split by the bucket of each one's stored size, in the buckets' order (empty
    buckets left out); each part's loader fits the stored images to its grid (`Buckets.fit`)."""
    if images.sizes is None or images.originals is None:
        raise ValueError("images: their stored sizes and images are unknown, so they cannot be framed per aspect "
                         "bucket (store_sets, generated_set and memory_set record them)")
    own = [buckets.choose(w, h) for w, h in images.sizes]
    parts = []
    for grid in buckets.grids:
        idx = [i for i, g in enumerate(own) if g == grid]
        if idx:
            framed = replace(images, image_size=buckets.pixel_size(grid), _cache=None,
                             loader=_framed(images.originals, buckets, grid))
            parts.append(Part(grid, torch.tensor(idx, dtype=torch.long), framed.subset(idx)))
    return parts


def _framed(originals: Originals, buckets: Buckets, grid: tuple[int, int]) -> Loader:
    def load(keys: Sequence[str]) -> np.ndarray:
        return np.stack([np.asarray(buckets.fit(im, grid)).transpose(2, 0, 1) for im in originals(keys)])

    return load


class StepBatches(Dataset):
    """Item `step`: uint8 [b, 3, H, W] pixels of the rows `rows(step)` = (set, rows of that set:
    this process's slice of that step's batch), loaded wherever the item is (a DataLoader worker
    decodes the PNGs)."""

    def __init__(self, sets: Sequence[ImageTextSet], rows: Callable[[int], tuple[int, torch.Tensor]]):
        self.sets, self.rows = list(sets), rows

    def __getitem__(self, step: int) -> torch.Tensor:
        which, rows = self.rows(step)
        return self.sets[which].pixels(rows)


def step_loader(sets: Sequence[ImageTextSet], rows: Callable[[int], tuple[int, torch.Tensor]], steps: range,
                workers: int, seed: int, pin_memory: bool = False) -> DataLoader:
    """The pixels of `steps` in order; `workers` processes load the next ones ahead (0: in this one).
    Its own seeded generator: creating the iterator draws a base seed, which must not come from
    the global RNG (a resumed run would then draw at a different point of the stream)."""
    return DataLoader(StepBatches(sets, rows), batch_size=None, sampler=steps, num_workers=workers,
                      prefetch_factor=4 if workers else None, pin_memory=pin_memory,
                      generator=torch.Generator().manual_seed(seed))


def scene_class_count(world) -> int:
    """Classes of `scene_cell_states`: the world's cell states plus "not the shapes world"."""
    from arm.data.shapes import cell_state_count

    return cell_state_count(world) + 1


def scene_cell_states(images: ImageTextSet, world, grid: tuple[int, int] | None = None) -> torch.Tensor:
    """[N, h*w] cell classes (arm.data.shapes.cell_states) of every image, on the token grid
    `grid` (default: the world's square grid).

    Every cell of an image without a scene graph gets the last class ("not the shapes world"):
    natural-image patches then never share a code with a cell state, whose decoded template
    they would blur. A scene whose (rows, cols) is not `grid` (its cells do not land on the
    tokens) gets IGNORE everywhere: the scene loss skips it.
    """
    from arm.data.shapes import Scene, cell_states, scene_grid

    grid = tuple(grid) if grid is not None else (world.grid, world.grid)
    out = torch.full((len(images), grid[0] * grid[1]), scene_class_count(world) - 1, dtype=torch.long)
    for i, scene_json in enumerate(images.scenes):
        if scene_json is not None:
            scene = Scene.from_json(scene_json)
            out[i] = torch.tensor(cell_states(scene, world)) if scene_grid(scene, world) == grid else IGNORE
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
    size_of = {sha: (int(w), int(h)) for sha, w, h in store.con.execute("SELECT sha256, width, height FROM images").fetchall()}
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
            sizes=[size_of[s] for s in shas],
            originals=store.load_images,
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
    """Shapes scenes (+ edit targets, of every scene shape of the world) and Fashion-MNIST images
    with the curated sources' captions.

    Used by tests and for development without a curated store; `arm train-tokenizer` reads the store.
    """
    from arm.data import holdout, shapes
    from arm.data.sources import fashion_mnist as fm

    rng = random.Random(f"tokenizer-generated:{seed}")
    keys, texts, scenes, labels, images = [], [], [], [], []
    for i in range(n_scenes):
        # the world's scene shapes (aspect buckets), from a stream of their own as the shapes
        # source draws them: a square-only world's scenes stay what they were
        grid = shapes.random_grid(random.Random(f"tokenizer-generated:{seed}:{i}:grid"), world)
        scene = holdout.training_scene(rng, world, grid=grid)
        keys.append(f"shapes:{seed}:{i}")
        texts.append([shapes.caption(scene, world.grid)])
        scenes.append(scene.to_json())
        labels.append(None)
        images.append(shapes.render(scene, world))
        edit = holdout.training_edit(rng, scene, world) if edits else None
        if edit is not None:
            target = edit[1]
            keys.append(f"shapes:{seed}:{i}:edit")
            texts.append([])
            scenes.append(target.to_json())
            labels.append(None)
            images.append(shapes.render(target, world))
    if n_fashion:
        root = Path(fashion_root or "/usr/share/datasets/fashion-mnist")
        fm_images, fl = fm.read_idx(root / f"{fashion_subset}-images-idx3-ubyte.gz",
                                 root / f"{fashion_subset}-labels-idx1-ubyte.gz", n_fashion)
        for j in range(len(fl)):
            keys.append(f"fashion_mnist:{fashion_subset}:{j}")
            texts.append([fm.caption(int(fl[j]))])
            scenes.append(None)
            labels.append(int(fl[j]))
            images.append(Image.fromarray(fm_images[j]))
    return memory_set(images, texts, image_size, keys=keys, scenes=scenes, labels=labels)


def memory_set(images: Sequence[Image.Image], texts: Sequence[Sequence[str]], image_size: int, *,
               keys: Sequence[str] | None = None, scenes: Sequence[list[dict] | None] | None = None,
               labels: Sequence[int | None] | None = None) -> ImageTextSet:
    """A set of PIL images held in memory (any sizes), with their caption-like texts: squashed
    to `image_size` for a single-bucket tokenizer, framed per bucket by `bucket_parts`."""
    n = len(images)
    keys = list(keys) if keys is not None else [f"image:{i}" for i in range(n)]
    index = {k: i for i, k in enumerate(keys)}
    cache = torch.from_numpy(np.stack([pil_to_uint8(im, image_size) for im in images]))

    def load(ks: Sequence[str]) -> np.ndarray:
        return cache[[index[k] for k in ks]].numpy()

    return ImageTextSet(keys, [list(t) for t in texts], list(scenes) if scenes is not None else [None] * n,
                        list(labels) if labels is not None else [None] * n, image_size, load, cache,
                        sizes=[im.size for im in images], originals=lambda ks: [images[index[k]] for k in ks])
