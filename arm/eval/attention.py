"""How a model's image tokens read their condition: the entropy of attention, per layer and head.

An image token has to gather every attribute of the object it draws from the caption. A head
whose attention has collapsed onto one word carries that one word; when most heads collapse
early in training, the attributes they did not lock onto are never bound (the tiny model drew
colour at chance this way, README "Attention collapse"). QK-norm (`model.arch: qwen3`) keeps
the entropy up.

Entropy is taken over the condition tokens only (the attention row renormalised there) and
divided by log(condition length): 0 = the head reads one token, 1 = it reads all alike.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from arm.text.formats import format_example, format_prompt

COLLAPSED = 0.1  # normalised entropy below which a head is counted as reading one token


@torch.no_grad()
def condition_entropy(model, docs: Sequence[tuple[list[int], slice, slice]]) -> torch.Tensor:
    """[layers, heads] mean normalised entropy of the `query` positions' attention over the
    `condition` positions, over documents given as (ids, condition, query)."""
    impl = model.config._attn_implementation
    model.config._attn_implementation = "eager"  # sdpa returns no attention weights
    device = next(model.parameters()).device
    per_doc = []
    try:
        for ids, cond, query in docs:
            n = cond.stop - cond.start
            if n < 2:
                raise ValueError(f"a condition of {n} token(s) has no attention entropy to measure")
            out = model(torch.tensor([ids], device=device), output_attentions=True, use_cache=False)
            layers = []
            for att in out.attentions:  # [1, heads, q, k]
                w = att[0, :, query, cond].float()
                w = w / w.sum(-1, keepdim=True).clamp_min(1e-12)
                layers.append((-(w * w.clamp_min(1e-12).log()).sum(-1) / math.log(n)).mean(-1))
            per_doc.append(torch.stack(layers))
    finally:
        model.config._attn_implementation = impl
    return torch.stack(per_doc).mean(0)


def summarize(per_head: torch.Tensor) -> dict[str, float]:
    return {"attention_entropy": float(per_head.mean()),
            "collapsed_heads": float((per_head < COLLAPSED).float().mean())}


def generate_docs(prompts: Sequence[list[int]], images: Sequence[Sequence[int]], layout) -> list[tuple[list[int], slice, slice]]:
    """Text-to-image documents teacher-forced on their codes: the caption is the condition, the
    positions that predict the image codes (from <boi> on) are the queries."""
    docs = []
    for text, codes in zip(prompts, images):
        ids, _ = format_example("generate", layout, text=list(text), target_image=list(codes))
        first = len(format_prompt("generate", layout, text=list(text))) - 1  # <boi> predicts the first code
        docs.append((ids, slice(1, first), slice(first, first + layout.tokens_per_image)))  # caption after <bos>
    return docs
