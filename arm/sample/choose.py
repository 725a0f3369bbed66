"""Turning next-token logits into tokens: guidance, temperature, top-k, top-p, and the draw.

The draw is Gumbel-max with noise fixed per (request, output position): token =
argmax(logits / T + g) over the allowed, filtered tokens, where g ~ Gumbel(0, 1) i.i.d. per
candidate id, which is an exact sample from softmax(logits / T) restricted to that set. Only
the ids of the grammar's span need noise (the image codes inside an image), and the noise is
float32 on the logits' device: nothing crosses from the host per step. The noise for position t
comes from the request's own seeded generator (on that device), so:

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


def gumbel(generator: torch.Generator, rows: int, width: int) -> torch.Tensor:
    """Gumbel(0, 1) noise [rows, width], float32 on the generator's device."""
    u = torch.rand(rows, width, generator=generator, device=generator.device, dtype=torch.float32)
    # u == 0 would give -inf; the smallest normal float keeps it a (very unlikely) finite draw
    return -torch.log(-torch.log(u.clamp_(min=torch.finfo(torch.float32).tiny)))


def choose(
    logits: torch.Tensor,
    allowed: torch.Tensor | None,
    noise: torch.Tensor | None,
    temperature: torch.Tensor,
    top_k: torch.Tensor,
    top_p: torch.Tensor,
) -> torch.Tensor:
    """One index per row of `logits` [N, W], restricted to `allowed` ([W] or [N, W] bool; None = all).

    temperature 0 is greedy (argmax; ties go to the lowest index) and needs no noise; otherwise
    `noise` [N, W] holds each row's Gumbel noise (rows of greedy requests are ignored).
    """
    logits = logits.float()
    neg = torch.finfo(logits.dtype).min
    if allowed is not None:
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
        removed = scaled <= neg
        if allowed is not None:
            removed |= ~(allowed if allowed.dim() == 1 else allowed[rows])
        perturbed = (scaled + noise[rows]).masked_fill(removed, float("-inf"))
        out[rows] = perturbed.argmax(-1)
    return out
