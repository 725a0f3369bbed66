"""Turning next-token logits into tokens: guidance, temperature, top-k, top-p, and the draw.

The draw is an inverse-CDF lookup with one uniform number per (request, output position), in
token-id order. A token is thus a deterministic function of (logits, that number): a request's
output depends only on its own seed, never on what else is in the batch, and speculative Jacobi
decoding can verify a sampled draft exactly (the same number is reused at the same position).
With u ~ U(0, 1) the lookup draws exactly from the filtered distribution.
"""

from __future__ import annotations

import torch


def guide(cond: torch.Tensor, uncond: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Classifier-free guidance on raw logits: u + s * (c - u); `scale` broadcasts over rows."""
    return uncond + scale.unsqueeze(-1) * (cond - uncond)


def filter_logits(logits: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Per-row top-k (0 = off) then top-p (1 = off) on temperature-scaled logits; removed -> -inf.

    transformers' TopK/TopP warpers take one value for the whole batch; a serving batch mixes
    requests with their own settings, so the thresholds here are per row.
    """
    n, v = logits.shape
    neg = torch.finfo(logits.dtype).min
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    rank = torch.arange(v, device=logits.device).expand(n, v)
    k = torch.where(top_k > 0, top_k.clamp(max=v), torch.full_like(top_k, v))
    drop = rank >= k.unsqueeze(-1)
    probs = sorted_logits.masked_fill(drop, neg).softmax(-1)
    # keep the smallest head whose mass reaches p: drop a token once the mass before it is >= p
    mass_before = probs.cumsum(-1) - probs
    drop |= (mass_before >= top_p.unsqueeze(-1)) & (rank > 0)
    removed = torch.zeros_like(drop).scatter(-1, order, drop)
    return logits.masked_fill(removed, neg)


def choose(
    logits: torch.Tensor,
    allowed: torch.Tensor,
    uniform: torch.Tensor,
    temperature: torch.Tensor,
    top_k: torch.Tensor,
    top_p: torch.Tensor,
) -> torch.Tensor:
    """One token per row of `logits` [N, V], restricted to `allowed` [N, V] (bool).

    temperature 0 is greedy (argmax; ties go to the lowest id). Otherwise the token is the first
    whose cumulative probability (in id order) exceeds `uniform` [N] times the total mass.
    """
    logits = logits.float()
    neg = torch.finfo(logits.dtype).min
    logits = logits.masked_fill(~allowed, neg)
    out = logits.argmax(-1)
    sampled = temperature > 0
    if bool(sampled.any()):
        rows = sampled.nonzero(as_tuple=True)[0]
        scaled = logits[rows] / temperature[rows].unsqueeze(-1)
        k, p = top_k[rows], top_p[rows]
        if bool(((k > 0) | (p < 1)).any()):  # the sort is most of the cost of a draw: skip it when unused
            scaled = filter_logits(scaled, k, p)
        # disallowed tokens must get exactly zero mass, also under a high temperature
        scaled = scaled.masked_fill(~allowed[rows], float("-inf"))
        probs = scaled.softmax(-1).double()
        cdf = probs.cumsum(-1)
        target = (uniform[rows].double() * cdf[:, -1]).unsqueeze(-1)
        # right=True: the first index whose cdf is strictly above the target has nonzero mass
        idx = torch.searchsorted(cdf, target, right=True).squeeze(-1)
        # rounding can put the target at the very top: fall back to the last token with mass
        last = (probs > 0).long().cumsum(-1).argmax(-1)
        out[rows] = torch.minimum(idx, last)
    return out
