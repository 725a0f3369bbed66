"""The held-out partition of the shapes world: what only evaluation ever draws (issue 13).

The world is small (216 one-object scenes on tiny), so eval items drawn from a different seed
still meet training items verbatim. Instead the world itself is split, by construction:

- `novel_composition`: scenes with an object matching a configured binding (say a red circle, or
  a triangle in the top row). No training caption, image, edit or question ever holds one, while
  every attribute value still occurs in training in other combinations (CLEVR-CoGenT).
- `novel`: the remaining scenes whose salted hash falls below `world.holdout.scenes`.
- `train`: everything else; the only scenes curation sources, tokenizer data and RL prompts use.

Every generator of training data draws through the `training_*` functions below (rejection
sampling on the generator's own rng, so each stream stays a pure function of its seed), and
the eval sets through `heldout_*`. A pure function of (world, scene), so nodes agree without
sharing anything.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable
from typing import TypeVar

from arm.config import WorldConfig
from arm.data import shapes
from arm.data.shapes import Scene, ShapeObject

SPLITS = ("train", "novel", "novel_composition")
HELD_OUT = ("novel", "novel_composition")
MAX_TRIES = 10_000

T = TypeVar("T")


class HoldoutError(ValueError):
    """The partition leaves nothing to draw for a request; the message says which."""


def scene_key(scene: Scene) -> str:
    """The canonical text of a scene (objects sorted, and a non-square scene's shape, which
    `to_json` holds): equal scenes, equal keys; a 3x4 and a 3x3 scene of the same objects differ."""
    return json.dumps(scene.to_json(), sort_keys=True)


def _hash_fraction(world: WorldConfig, scene: Scene) -> float:
    digest = hashlib.sha256(f"{world.holdout.salt}|{scene_key(scene)}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def matches_binding(attributes: dict, world: WorldConfig) -> bool:
    """Whether stated attributes (an object's, or a question's) hold every attribute of a binding."""
    return any(all(attributes.get(k) == v for k, v in b.attributes().items()) for b in world.holdout.bindings)


def object_held_out(o: ShapeObject, world: WorldConfig) -> bool:
    return matches_binding(o.__dict__, world)


def split_of(scene: Scene, world: WorldConfig) -> str:
    if any(object_held_out(o, world) for o in scene.objects):
        return "novel_composition"
    return "novel" if _hash_fraction(world, scene) < world.holdout.scenes else "train"


def is_training(scene: Scene, world: WorldConfig) -> bool:
    return split_of(scene, world) == "train"


def _draw(rng: random.Random, make: Callable[[random.Random], T], ok: Callable[[T], bool], what: str) -> T:
    for _ in range(MAX_TRIES):
        value = make(rng)
        if ok(value):
            return value
    raise HoldoutError(f"{what}: no draw in {MAX_TRIES} tries satisfies the partition (world.holdout leaves too little)")


# ----------------------------------------------------------------------------- training side


def training_scene(rng: random.Random, world: WorldConfig, n: int | None = None,
                   grid: tuple[int, int] | None = None) -> Scene:
    return _draw(rng, lambda r: shapes.random_scene(r, world, n, grid), lambda s: is_training(s, world),
                 "training scene")


def training_edit(rng: random.Random, scene: Scene, world: WorldConfig) -> tuple[str, Scene, str] | None:
    """An edit of a training scene whose target is a training scene too; None when a few draws
    find none (an edit that would create a held-out object is dropped, not forced)."""
    for _ in range(16):
        edit = shapes.random_edit(rng, scene, world)
        if is_training(edit[1], world):
            return edit
    return None


def training_edit_triplet(rng: random.Random, world: WorldConfig,
                          grid: tuple[int, int] | None = None) -> tuple[Scene, str, Scene, str]:
    """(source, instruction, target, op) on `grid` with both scenes in training (RL's edit prompts)."""

    def make(r: random.Random):
        source = training_scene(r, world, grid=grid)
        return source, training_edit(r, source, world)

    source, edit = _draw(rng, make, lambda e: e[1] is not None, "training edit")
    instruction, target, op = edit
    return source, instruction, target, op


def training_knowledge(rng: random.Random, world: WorldConfig,
                       grid: tuple[int, int] | None = None) -> tuple[str, Scene]:
    return _draw(rng, lambda r: shapes.knowledge_prompt(r, world, grid), lambda p: is_training(p[1], world),
                 "training knowledge prompt")


def training_vqa(rng: random.Random, scene: Scene, world: WorldConfig) -> tuple[str, str]:
    """A question about a training scene that names no held-out binding ("is there a red circle?")."""
    return _draw(rng, lambda r: shapes.vqa_pair(r, scene, world),
                 lambda qa: not matches_binding(shapes.question_attributes(qa[0], world), world), "training question")


# ----------------------------------------------------------------------------- evaluation side


def heldout_scene(rng: random.Random, world: WorldConfig, split: str, make: Callable[[random.Random], Scene]) -> Scene:
    if split not in HELD_OUT:
        raise HoldoutError(f"split {split!r}: evaluation draws from {list(HELD_OUT)}")
    return _draw(rng, make, lambda s: split_of(s, world) == split, f"{split} scene")


def edit_split(source: Scene, target: Scene, world: WorldConfig) -> str:
    """An edit is compositional when its source or its target holds a held-out object, novel when
    its source is a held-out scene, else a training edit."""
    if "novel_composition" in (split_of(source, world), split_of(target, world)):
        return "novel_composition"
    return split_of(source, world)


def heldout_edit(rng: random.Random, world: WorldConfig, split: str,
                 grid: tuple[int, int] | None = None) -> tuple[Scene, str, Scene, str]:
    """(source, instruction, target, op) of a held-out edit on `grid`: no training record has its
    (source, instruction)."""
    if split not in HELD_OUT:
        raise HoldoutError(f"split {split!r}: evaluation draws from {list(HELD_OUT)}")

    def make(r: random.Random):
        source = shapes.random_scene(r, world, grid=grid)
        instruction, target, op = shapes.random_edit(r, source, world)
        return source, instruction, target, op

    return _draw(rng, make, lambda e: edit_split(e[0], e[2], world) == split, f"{split} edit")


def heldout_knowledge(rng: random.Random, world: WorldConfig, split: str,
                      grid: tuple[int, int] | None = None) -> tuple[str, Scene]:
    if split not in HELD_OUT:
        raise HoldoutError(f"split {split!r}: evaluation draws from {list(HELD_OUT)}")
    return _draw(rng, lambda r: shapes.knowledge_prompt(r, world, grid), lambda p: split_of(p[1], world) == split,
                 f"{split} knowledge prompt")
