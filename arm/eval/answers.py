"""Text side of the benchmarks: answer normalisation, question types, a scene-reading answerer,
and parsing a caption back into a scene graph (for caption F1).
"""

from __future__ import annotations

import re
from collections import Counter
from functools import lru_cache

from arm.config import KINDS, PALETTE, SIZES
from arm.data.shapes import NUMBER_WORDS, Scene, ShapeObject, position_name

_ARTICLES = re.compile(r"^(?:a|an|the)\s+")
_PUNCT = re.compile(r"[.!?,;:]+$")


def normalize_answer(text: str) -> str:
    """Lower case, no trailing punctuation, no leading article, digits spelled out."""
    t = " ".join(str(text).lower().split())
    t = _PUNCT.sub("", t).strip()
    t = _ARTICLES.sub("", t)
    if t.isdigit() and int(t) < len(NUMBER_WORDS):
        t = NUMBER_WORDS[int(t)]
    return t


def exact_match(prediction: str, reference: str) -> bool:
    return normalize_answer(prediction) == normalize_answer(reference)


# ----------------------------------------------------------------------------- shapes questions

_Q_COUNT = re.compile(r"^how many shapes are there\?$")
_Q_SHAPE_AT = re.compile(r"^what shape is in the (.+)\?$")
_Q_EXISTS = re.compile(r"^is there an? (\w+) (\w+)\?$")
_Q_COLOR_OF = re.compile(r"^what colou?r is the (\w+)\?$")
_Q_SIZE_OF = re.compile(r"^what size is the (\w+)\?$")
QUESTION_TYPES = ("count", "shape_at", "exists", "color_of", "size_of")


@lru_cache(maxsize=16)
def positions(rows: int, cols: int | None = None) -> dict[str, tuple[int, int]]:
    """Cell names of a rows x cols grid (square when `cols` is None) -> (row, col)."""
    cols = rows if cols is None else cols
    return {position_name(r, c, rows, cols): (r, c) for r in range(rows) for c in range(cols)}


def question_type(question: str) -> str:
    q = " ".join(question.lower().split())
    for name, pattern in zip(QUESTION_TYPES, (_Q_COUNT, _Q_SHAPE_AT, _Q_EXISTS, _Q_COLOR_OF, _Q_SIZE_OF)):
        if pattern.match(q):
            return name
    return "other"


def answer_from_scene(question: str, scene: Scene, grid: int) -> str:
    """What a reader who sees exactly `scene` answers; on a parsed image it is the oracle's answer."""
    q = " ".join(question.lower().split())
    if _Q_COUNT.match(q):
        return NUMBER_WORDS[min(len(scene.objects), len(NUMBER_WORDS) - 1)]
    if m := _Q_SHAPE_AT.match(q):
        cell = positions(*(scene.grid or (grid, grid))).get(m.group(1))  # a bucket's scene: its own cells
        if cell is None:
            raise ValueError(f"question {question!r}: unknown position {m.group(1)!r}")
        o = scene.at(*cell)
        return o.kind if o else "nothing"
    if m := _Q_EXISTS.match(q):
        color, kind = m.groups()
        return "yes" if any(o.color == color and o.kind == kind for o in scene.objects) else "no"
    for pattern, attr in ((_Q_COLOR_OF, "color"), (_Q_SIZE_OF, "size")):
        if m := pattern.match(q):
            matches = [o for o in scene.objects if o.kind == m.group(1)]
            return getattr(matches[0], attr) if matches else "nothing"
    raise ValueError(f"question {question!r}: not a shapes-world question template")


# ----------------------------------------------------------------------------- captions


@lru_cache(maxsize=16)
def _caption_pattern(grid: int) -> re.Pattern:
    # Every colour, kind and size the renderer knows, not just this world's: a model that says
    # "purple" in a red/green world has said something, and it is wrong.
    alt = lambda words: "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))  # noqa: E731
    word = alt([*SIZES, *PALETTE, *KINDS])
    return re.compile(rf"\b(?:a|an)\s+({word})\s+({word})\s+({word})\s+in\s+the\s+({alt(positions(grid))})\b")


def parse_caption(text: str, grid: int) -> list[ShapeObject]:
    """The objects a caption states, in order ("a small red circle in the top left, ..."). The three
    attribute words may come in any order; a phrase without exactly one size, colour and kind
    states no object."""
    t = " ".join(str(text).lower().split())
    out = []
    for *words, pos in _caption_pattern(grid).findall(t):
        size = [w for w in words if w in SIZES]
        color = [w for w in words if w in PALETTE]
        kind = [w for w in words if w in KINDS]
        if len(size) == len(color) == len(kind) == 1:
            r, c = positions(grid)[pos]
            out.append(ShapeObject(r, c, kind[0], color[0], size[0]))
    return out


def scene_f1(predicted: list[ShapeObject], reference: Scene) -> dict[str, float]:
    """Object-level precision / recall / F1 of a scene graph (multiset of full objects)."""
    pred, ref = Counter(predicted), Counter(reference.objects)
    if not pred and not ref:
        return {"precision": 1.0, "recall": 1.0, "f1": 1.0}
    hit = sum((pred & ref).values())
    p = hit / sum(pred.values()) if pred else 0.0
    r = hit / sum(ref.values()) if ref else 0.0
    return {"precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r else 0.0}
