"""Pretraining examples: curated samples joined with their image codes.

Codes come from the tokenize stage's shards (`pretrain.images: tokenizer`) or from the perfect
shapes tokenizer (`oracle`: one code per grid cell read off the scene in the sample's meta).
`pretrain.data: shapes` skips the store and draws scenes straight from the shapes source.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from arm.config import ArmConfig, ShapesSourceConfig
from arm.data.shapes import Scene
from arm.text.sequences import Example
from arm.train.perfect import PerfectTokenizer

Codes = tuple[int, ...]
Grid = tuple[int, int]


class ImageCodes(NamedTuple):
    """An image's codes in row-major order and its (h, w) grid (None: the tokenizer's default grid)."""

    codes: Codes
    grid: Grid | None = None


@dataclass(frozen=True)
class ImageSpec:
    """What the vocabulary needs to know about the visual tokenizer."""

    codebook_size: int
    grid: Grid
    levels: tuple[int, ...]
    reference: dict  # manifest entry: which tokenizer, with a hash of its files
    grids: tuple[Grid, ...] = ()  # every aspect bucket, `grid` first; () = the one grid


@dataclass
class ExampleSet:
    train: list[Example]
    val: list[Example]
    image: ImageSpec
    skipped: dict[str, int]  # reason -> count
    version: str  # content hash of the examples (the manifest's data version)


def split_of(key: str, val: float, test: float) -> str:
    """Deterministic split of a content id (the same scene always lands in the same split)."""
    u = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2**64
    return "val" if u < val else "test" if u < val + test else "train"


def make_example(
    id: str, task: str, split: str, *, caption=None, question=None, answer=None, instruction=None,
    image: ImageCodes | None = None, source_image: ImageCodes | None = None, meta=None,
) -> Example:
    """One curated sample as an Example. `image` is the sample's image (for edits: the target)."""
    meta = meta or {}
    codes, grid = image if image is not None else (None, None)
    if task == "generate":
        return Example(id, task, split, text=caption, target_image=codes, target_grid=grid, meta=meta)
    if task == "understand":
        return Example(id, task, split, text=question, answer=answer, image=codes, image_grid=grid, meta=meta)
    if task == "edit":
        return Example(id, task, split, text=instruction, image=source_image.codes, image_grid=source_image.grid,
                       target_image=codes, target_grid=grid, meta=meta)
    if task == "text":
        return Example(id, task, split, text=caption or answer or question or instruction, meta=meta)
    raise ValueError(f"sample {id}: unknown task {task!r}")


def shapes_examples(cfg: ArmConfig) -> ExampleSet:
    """Scenes of the first shapes source, straight from the generator, with perfect codes."""
    from arm.data.sources.shapes import scene_records

    src = next((s for s in cfg.data.sources if isinstance(s, ShapesSourceConfig)), ShapesSourceConfig())
    perfect = PerfectTokenizer(cfg.world)
    train, val = [], []
    for i in range(src.n_scenes):
        split = split_of(f"shapes:{src.seed}:{i}", cfg.data.splits.val, cfg.data.splits.test)
        if split == "test":
            continue
        for r in scene_records(src, cfg, i):
            scene = r.meta.get("scene")
            target = r.meta.get("target_scene")
            codes = lambda s: ImageCodes(tuple(perfect.encode_scene(Scene.from_json(s))))  # noqa: E731
            if r.task == "edit":
                ex = make_example(r.ref, r.task, split, instruction=r.instruction, image=codes(target),
                                  source_image=codes(scene), meta=r.meta)
            else:
                ex = make_example(r.ref, r.task, split, caption=r.caption, question=r.question, answer=r.answer,
                                  image=codes(scene) if scene is not None else None, meta=r.meta)
            (val if split == "val" else train).append(ex)
    spec = ImageSpec(perfect.codebook_size, perfect.grid, perfect.levels, oracle_reference(cfg))
    return ExampleSet(train, val, spec, {}, examples_version(train + val))


def oracle_reference(cfg: ArmConfig) -> dict:
    world = cfg.world.model_dump(mode="json")
    return {"kind": "oracle", "world": world, "sha256": _hash_json(world)}


def store_examples(cfg: ArmConfig, codes_of: Callable[[str, dict], ImageCodes | None], spec: ImageSpec) -> ExampleSet:
    """Curated train/val samples; `codes_of(image_sha, meta)` gives an image's codes or None."""
    from arm.data.store import CuratedStore

    root = Path(cfg.data.store)
    if not root.exists():
        raise FileNotFoundError(f"curated store {root} not found: run `arm curate` first (or set pretrain.data=shapes)")
    df = CuratedStore(root).samples()
    train, val, skipped = [], [], {}
    for row in df.itertuples(index=False):
        if row.split not in ("train", "val"):
            continue
        meta = _meta(row.meta)
        image = source = None
        if row.task in ("generate", "understand", "edit"):
            image = codes_of(row.image_sha, meta)
            if row.task == "edit":
                source = codes_of(row.source_image_sha, {"target": False, **meta})
            if image is None or (row.task == "edit" and source is None):
                skipped[f"no codes ({row.task})"] = skipped.get(f"no codes ({row.task})", 0) + 1
                continue
        ex = make_example(str(row.id), row.task, row.split, caption=_s(row.caption), question=_s(row.question),
                          answer=_s(row.answer), instruction=_s(row.instruction), image=image, source_image=source,
                          meta=meta)
        (val if row.split == "val" else train).append(ex)
    return ExampleSet(train, val, spec, skipped, examples_version(train + val))


def oracle_codes_of(cfg: ArmConfig) -> tuple[Callable[[str, dict], ImageCodes | None], ImageSpec]:
    """Perfect codes from the scene in a sample's meta (edits: `target_scene` for the target image)."""
    perfect = PerfectTokenizer(cfg.world)

    def codes_of(_sha: str, meta: dict) -> ImageCodes | None:
        is_target = meta.get("target", True)
        scene = meta.get("target_scene") if is_target and "target_scene" in meta else meta.get("scene")
        if scene is None:
            return None  # not a shapes image (e.g. Fashion-MNIST): the oracle cannot encode it
        return ImageCodes(tuple(perfect.encode_scene(Scene.from_json(scene))))

    return codes_of, ImageSpec(perfect.codebook_size, perfect.grid, perfect.levels, oracle_reference(cfg))


def load_examples(cfg: ArmConfig) -> ExampleSet:
    p = cfg.pretrain
    if p.data == "shapes":
        return shapes_examples(cfg)
    if p.images == "oracle":
        codes_of, spec = oracle_codes_of(cfg)
    else:
        from arm.train.tokens import token_codes_of

        codes_of, spec = token_codes_of(cfg)
    return store_examples(cfg, codes_of, spec)


def examples_version(examples: Sequence[Example]) -> str:
    h = hashlib.sha256()
    for e in examples:
        key = (e.id, e.task, e.split, e.text, e.answer, e.image, e.target_image)
        if e.image_grid is not None or e.target_grid is not None:  # square-only data keeps its version
            key += (e.image_grid, e.target_grid)
        h.update(repr(key).encode())
    return h.hexdigest()


def training_texts(examples: Iterable[Example]) -> Iterable[str]:
    for e in examples:
        if e.text:
            yield e.text
        if e.answer:
            yield e.answer


def _meta(value) -> dict:
    if value is None:
        return {}
    if isinstance(value, dict):
        return value
    if isinstance(value, (str, bytes)):
        return json.loads(value) if value else {}
    raise TypeError(f"sample meta must be a dict or JSON text, got {type(value).__name__}")


def _s(value) -> str | None:
    if value is None or (isinstance(value, float) and value != value):  # pandas NaN
        return None
    return str(value)


def _hash_json(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()
