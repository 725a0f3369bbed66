"""Training sequences: task examples -> token documents -> fixed-length packed rows.

A *document* is one example in its task format (arm.text.formats) with a loss mask. Documents
are packed into rows of `seq_len` tokens; every document restarts its position ids at 0, which
is how transformers recognises packed sequences (masking_utils.find_packed_sequence_indices:
with attention_mask=None it builds a block-diagonal causal mask for sdpa/eager, and the
flash-attention varlen path reads the same resets), so no token attends across documents.

The training stream itself (per-task quotas of documents per block, CFG condition dropout,
best-fit packing), streamed per rank from token shards, is arm.train.shards.DocumentStream.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch

from arm.text.formats import format_example
from arm.text.vocab import VocabLayout

TASKS: tuple[str, ...] = ("understand", "generate", "edit", "text")
TASK_INDEX = {t: i for i, t in enumerate(TASKS)}


@dataclass(frozen=True)
class Example:
    """One training example with its images already as codes.

    text: the question (understand), caption (generate), instruction (edit) or body (text).
    """

    id: str
    task: str
    split: str
    text: str | None = None
    answer: str | None = None  # understand target
    image: tuple[int, ...] | None = None  # understand input, edit source
    target_image: tuple[int, ...] | None = None  # generate / edit target
    image_grid: tuple[int, int] | None = None  # (h, w) of `image`; None = the layout's default grid
    target_grid: tuple[int, int] | None = None  # (h, w) of `target_image`; None = the default grid
    meta: Mapping = field(default_factory=dict, compare=False, hash=False)


@dataclass(frozen=True)
class TokExample:
    """An example with its text tokenized (ids without specials)."""

    example: Example
    text_ids: tuple[int, ...]
    answer_ids: tuple[int, ...]

    @property
    def task(self) -> str:
        return self.example.task


def tokenize_examples(examples: Sequence[Example], encode) -> list[TokExample]:
    """`encode(list[str]) -> list[list[int]]` runs once over all texts (batched)."""
    texts = [e.text or "" for e in examples]
    answers = [e.answer or "" for e in examples]
    ids = encode(texts + answers)
    n = len(examples)
    return [TokExample(e, tuple(ids[i]), tuple(ids[n + i])) for i, e in enumerate(examples)]


def document(ex: TokExample, layout: VocabLayout, uncond: bool = False) -> tuple[list[int], list[int]]:
    """Token ids and loss mask of one example (uncond: the CFG-dropped condition)."""
    e = ex.example
    grids = {"image_grid": e.image_grid, "target_grid": e.target_grid}
    try:
        if e.task == "understand":
            return format_example("understand", layout, text=list(ex.text_ids), image=e.image,
                                  target_text=list(ex.answer_ids), **grids)
        if e.task == "generate":
            return format_example("generate", layout, text=list(ex.text_ids), target_image=e.target_image,
                                  uncond=uncond, **grids)
        if e.task == "edit":
            return format_example(
                "edit", layout, text=list(ex.text_ids), image=e.image, target_image=e.target_image, uncond=uncond,
                **grids,
            )
        if e.task == "text":
            return format_example("text", layout, text=list(ex.text_ids))
    except ValueError as err:
        raise ValueError(f"example {e.id} ({e.task}): {err}") from None
    raise ValueError(f"example {e.id}: unknown task {e.task!r}; known: {TASKS}")


@dataclass
class Row:
    """One packed row; tensors of shape [seq_len]."""

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    loss_mask: torch.Tensor  # 1 where the token is a target (predicted from the one before)
    task_ids: torch.Tensor  # TASK_INDEX of the token's document, -1 on padding
    n_docs: int
    n_pad: int


def pack(docs: Sequence[tuple[list[int], list[int], int]], seq_len: int, pad_id: int) -> list[Row]:
    """Best-fit-decreasing packing of (ids, mask, task index) documents into rows of seq_len."""
    order = sorted(range(len(docs)), key=lambda i: -len(docs[i][0]))
    bins: list[list[int]] = []
    free: list[int] = []
    for i in order:
        n = len(docs[i][0])
        if n > seq_len:
            raise ValueError(f"document of {n} tokens does not fit seq_len {seq_len}")
        best = -1
        for b, room in enumerate(free):
            if n <= room and (best < 0 or room < free[best]):
                best = b
        if best < 0:
            bins.append([i])
            free.append(seq_len - n)
        else:
            bins[best].append(i)
            free[best] -= n
    rows = []
    for members in bins:
        ids, pos, mask, task = [], [], [], []
        for i in members:
            d_ids, d_mask, t = docs[i]
            ids += d_ids
            pos += range(len(d_ids))
            mask += d_mask
            task += [t] * len(d_ids)
        n_pad = seq_len - len(ids)
        ids += [pad_id] * n_pad
        pos += range(n_pad)  # padding is its own document: it attends nowhere else
        mask += [0] * n_pad
        task += [-1] * n_pad
        rows.append(
            Row(
                torch.tensor(ids, dtype=torch.long),
                torch.tensor(pos, dtype=torch.long),
                torch.tensor(mask, dtype=torch.long),
                torch.tensor(task, dtype=torch.long),
                len(members),
                n_pad,
            )
        )
    return rows


def collate(rows: Sequence[Row]) -> dict[str, torch.Tensor]:
    return {
        "input_ids": torch.stack([r.input_ids for r in rows]),
        "position_ids": torch.stack([r.position_ids for r in rows]),
        "loss_mask": torch.stack([r.loss_mask for r in rows]),
        "task_ids": torch.stack([r.task_ids for r in rows]),
    }


def block_quotas(weights: Mapping[str, float], pools: Mapping[str, int], block_docs: int) -> dict[str, int]:
    """Documents of each task in one block: proportional to weight, at least 1 for a used task."""
    used = {t: w for t, w in weights.items() if w > 0 and pools.get(t, 0) > 0}
    if not used:
        raise ValueError(f"no task has both a positive weight and examples: weights {dict(weights)}, pools {dict(pools)}")
    total = sum(used.values())
    return {t: max(1, round(block_docs * w / total)) for t, w in used.items()}


def eval_rows(examples: Sequence[TokExample], layout: VocabLayout, seq_len: int, max_rows: int) -> dict[str, list[Row]]:
    """Per task, its first validation documents (condition kept) that fill about max_rows rows.

    Documents are chosen before packing (in the given order), not rows after it: packing sorts
    by length, so cutting rows would keep only the longest documents.
    """
    out: dict[str, list[Row]] = {}
    budget = int(max_rows * seq_len * 0.95)
    for task in TASKS:
        docs, used = [], 0
        for ex in examples:
            if ex.task != task:
                continue
            ids, mask = document(ex, layout)
            if len(ids) > seq_len:
                continue
            if used + len(ids) > budget:
                break
            docs.append((ids, mask, TASK_INDEX[task]))
            used += len(ids)
        if docs:
            out[task] = pack(docs, seq_len, layout.pad)
    return out
