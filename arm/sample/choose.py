"""Turning next-token logits into tokens: guidance, temperature, top-k, top-p, and the draw.

The draw is Gumbel-max with noise fixed per (request, output position): token =
argmax(logits / T + g) over the allowed, filtered tokens, where g ~ Gumbel(0, 1) i.i.d. per
vocabulary entry, which is an exact sample from softmax(logits / T) restricted to that set.
The noise for position t comes from the request's own seeded generator, so:

* a request's output depends only on its seed, never on what else is in the batch;
* speculative Jacobi decoding can verify a sampled draft exactly: it reuses the noise of that
  position, so an accepted token is the token plain decoding would have drawn. Gumbel noise is
  a near-maximal coupling: when the distribution at a position moves only a little after the
  context changes, the same token usually wins again (an inverse-CDF lookup with one uniform
  per position, the obvious alternative, loses that whenever mass shifts among earlier ids).
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


def gumbel(generator: torch.Generator, vocab: int) -> torch.Tensor:
    """Gumbel(0, 1) noise [vocab] for one output position (float32, CPU)."""
    u = torch.rand(vocab, generator=generator, dtype=torch.float64).clamp_(min=1e-300)
    return (-torch.log(-torch.log(u))).float()


def choose(
    logits: torch.Tensor,
    allowed: torch.Tensor,
    noise: torch.Tensor | None,
    temperature: torch.Tensor,
    top_k: torch.Tensor,
    top_p: torch.Tensor,
) -> torch.Tensor:
    """One token per row of `logits` [N, V], restricted to `allowed` [N, V] (bool).

    temperature 0 is greedy (argmax; ties go to the lowest id) and needs no noise; otherwise
    `noise` [N, V] holds each row's Gumbel noise (rows of greedy requests are ignored).
    """
    logits = logits.float()
    neg = torch.finfo(logits.dtype).min
    logits = logits.masked_fill(~allowed, neg)
    out = logits.argmax(-1)
    sampled = temperature > 0
    if bool(sampled.any()):
        if noise is None:
            raise ValueError("sampling with temperature > 0 needs noise")
        rows = sampled.nonzero(as_tuple=True)[0]
        scaled = logits[rows] / temperature[rows].unsqueeze(-1)
        k, p = top_k[rows], top_p[rows]
        if bool(((k > 0) | (p < 1)).any()):  # the sort is most of the cost of a draw: skip it when unused
            scaled = filter_logits(scaled, k, p)
        # disallowed and filtered tokens must never win, whatever their noise
        removed = ~allowed[rows] | (scaled <= neg)
        perturbed = (scaled + noise[rows].to(scaled.device)).masked_fill(removed, float("-inf"))
        out[rows] = perturbed.argmax(-1)
    return out
