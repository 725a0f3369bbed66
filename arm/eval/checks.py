"""Per-sample checks of generated and edited images against a scene spec, all through the oracle.

Plain functions of (spec, parsed scene): the evaluate modules average them and RL rewards reuse
them, so a benchmark and a reward can never disagree about what "right" means.

Scoring is strict. A text-to-image prompt of this world is a full caption: it states the kind,
colour, size and position of every object, so a generated image is right only if it shows every
stated attribute of every object and nothing else. The oracle reads what it cannot recognise
(off-palette colours, blobs, half-drawn shapes) as `unknown`, which matches no spec, so such an
image fails every check; its ink also counts against perceptual quality.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

from arm.config import WorldConfig
from arm.data.oracle import FOREGROUND_DELTA, is_known, parse, to_array
from arm.data.shapes import Scene, render_array

GENEVAL_CATEGORIES = ("single_object", "two_object", "counting", "colors", "position", "color_attr")


def geneval_check(category: str, spec: Scene, parsed: Scene) -> bool:
    """GenEval's categories, with the oracle's scene in place of a detector, scored strictly.

    GenEval checks only the attribute its category is about (the kinds for `two_object`, the
    colours for `colors`, ...) and ignores extra objects. Our prompts are full captions that state
    every attribute of every object, so every category requires all of them: the parsed scene
    must be exactly the spec scene. Extra objects fail too (a check that ignored them would pay an
    image, or an RL policy, for filling every cell). The category only names the prompt family.
    """
    if category not in GENEVAL_CATEGORIES:
        raise ValueError(f"unknown geneval category {category!r}; known: {list(GENEVAL_CATEGORIES)}")
    if not spec.objects:
        raise ValueError(f"geneval {category}: the spec scene is empty")
    if category == "counting" and len({o.kind for o in spec.objects}) != 1:
        kinds = sorted({o.kind for o in spec.objects})
        raise ValueError(f"geneval counting: spec must use one kind, got {kinds}")
    return parsed == spec


OBJECT_ATTRIBUTES = ("color", "kind", "size", "cell")


def object_attributes(objects, parsed: Scene) -> dict[str, int]:
    """Per stated object, which of its attributes the image shows: `cell` if the parsed scene has an
    object in its cell, and that object's colour, kind and size if they are the stated ones (an
    object missing from its cell gets none). Counts, so a summary can pool objects over samples:
    an attribute at chance shows here even when an exact-scene score hides why."""
    hits = dict.fromkeys(OBJECT_ATTRIBUTES, 0)
    objects = list(objects)
    for o in objects:
        p = parsed.at(o.row, o.col)
        if p is None:
            continue
        hits["cell"] += 1
        hits["color"] += p.color == o.color
        hits["kind"] += p.kind == o.kind
        hits["size"] += p.size == o.size
    return {"objects": len(objects), **{f"{a}_hits": n for a, n in hits.items()}}


WISE_ASPECTS = ("kind", "color", "size", "position")


def wise_check(spec: Scene, parsed: Scene) -> dict[str, bool]:
    """`match`: the parsed scene is exactly the implied one. The aspects say which attributes of
    the drawn object are right; they need exactly one drawn object (the prompt implies one), so
    an image that fills every cell gets no aspect right."""
    if len(spec.objects) != 1:
        raise ValueError(f"wise: a knowledge prompt implies one object, spec has {len(spec.objects)}")
    o = spec.objects[0]
    p = parsed.objects[0] if len(parsed.objects) == 1 else None
    return {
        "match": parsed == spec,
        "kind": p is not None and p.kind == o.kind,
        "color": p is not None and p.color == o.color,
        "size": p is not None and p.size == o.size,
        "position": p is not None and (p.row, p.col) == (o.row, o.col),
    }


def perceptual_quality(image: Image.Image | np.ndarray, world: WorldConfig, tolerance: int) -> float:
    """0-10: how much of the drawn ink is exactly what a clean render of the parsed scene draws.

    The image is parsed, the scene re-rendered, and the two compared over the union of their
    ink; blur, stray marks, off-palette colours and malformed shapes (read as unknown, so not
    re-rendered) all lower it. A render scores 10; an image with no ink at all scores 0 (nothing
    was drawn to be judged).
    """
    arr = to_array(image, world)
    parsed = parse(image, world)
    # An unknown object has no clean render: drawing only the known ones makes its ink disagree.
    ref = render_array(parsed.with_objects(o for o in parsed.objects if is_known(o)), world).astype(np.int16)
    bg = np.asarray(world.background, dtype=np.int16)
    ink = np.abs(arr - bg).max(axis=2) > FOREGROUND_DELTA
    ink_ref = np.abs(ref - bg).max(axis=2) > FOREGROUND_DELTA
    union = ink | ink_ref
    n = int(union.sum())
    if n == 0:
        return 0.0
    agree = np.abs(arr - ref).max(axis=2) <= tolerance
    return 10.0 * float((agree & union).sum()) / n


def edit_check(source: Scene, target: Scene, parsed: Scene, grid: int) -> dict[str, float | None]:
    """GEdit-style semantic consistency from the oracle.

    `fulfilled`: every cell the instruction changes reads as in the target. `preservation`: the
    share of the other cells with something in them (before or after) that kept their state, so
    wiping or adding objects elsewhere counts as over-editing (None if there are no such cells). As VIEScore does, semantic
    consistency is the minimum of the two, on 0-10. `grid`: the world's square side; a scene of
    another shape (an aspect bucket) is judged on its own cells.
    """
    rows, cols = source.grid or (grid, grid)
    cells = [(r, c) for r in range(rows) for c in range(cols)]
    edited = [rc for rc in cells if source.at(*rc) != target.at(*rc)]
    if not edited:
        raise ValueError("edit: source and target scenes are identical (nothing to edit)")
    fulfilled = float(all(parsed.at(*rc) == target.at(*rc) for rc in edited))
    judged = [rc for rc in cells if rc not in edited and (source.at(*rc) or parsed.at(*rc))]
    # the objects the instruction puts in place (none for a removal): attributes of what was drawn
    placed = [target.at(*rc) for rc in edited if target.at(*rc) is not None]
    # None when nothing outside the edit is (or was) drawn: there is nothing to preserve.
    preservation = sum(parsed.at(*rc) == source.at(*rc) for rc in judged) / len(judged) if judged else None
    return {
        "fulfilled": fulfilled,
        "preservation": preservation,
        "semantic_consistency": 10.0 * min(fulfilled, 1.0 if preservation is None else preservation),
        **object_attributes(placed, parsed),
    }


def edit_overall(semantic_consistency: float, perceptual_quality_: float) -> float:
    """GEdit-Bench's per-sample overall: the geometric mean of SC and PQ."""
    return math.sqrt(semantic_consistency * perceptual_quality_)
