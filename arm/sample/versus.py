"""The sampling engine against transformers' `generate` on the same requests (benchmarks/sample.py,
the GPU smoke).

Baseline: `model.generate` for the same number of image tokens, sampling at the requests'
temperature with a LogitsProcessor that allows only image codes (what the engine's grammar does
inside an image span), and transformers' own CFG (`guidance_scale` with the unconditional prompts
as `negative_prompt_ids`). `speedup` = generate seconds / engine seconds, measured alternating in
the same process, best of `repeats`, after one warm-up each (compiles, allocator, kernels).
"""

from __future__ import annotations

import time

import torch
from transformers import LogitsProcessor, LogitsProcessorList

from arm.sample.engine import Engine, Request
from arm.text.vocab import VocabLayout


class ImageCodesOnly(LogitsProcessor):
    """What the engine's grammar does inside an image span, as a `generate` logits processor."""

    def __init__(self, layout: VocabLayout, vocab_size: int):
        self.banned = ~layout.is_image(torch.arange(vocab_size))

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        return scores.masked_fill(self.banned.to(scores.device), float("-inf"))


def _left_pad(prompts: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = torch.tensor(p)
        mask[i, width - len(p):] = 1
    return ids, mask


def generate_images(model, layout: VocabLayout, reqs: list[Request]) -> list[list[int]]:
    """One batch through `model.generate`: h*w sampled image codes per request (then <eoi>, as the engine)."""
    ids, mask = _left_pad([r.prompt for r in reqs], layout.pad)
    kw = {}
    if reqs[0].cfg_scale != 1:
        uids, umask = _left_pad([r.uncond_prompt for r in reqs], layout.pad)
        kw = {"guidance_scale": reqs[0].cfg_scale, "negative_prompt_ids": uids, "negative_prompt_attention_mask": umask}
    n = layout.tokens_per_image
    out = model.generate(
        input_ids=ids, attention_mask=mask, do_sample=True, temperature=reqs[0].temperature, top_k=0, top_p=1.0,
        max_new_tokens=n, min_new_tokens=n, pad_token_id=layout.pad, eos_token_id=None,
        logits_processor=LogitsProcessorList([ImageCodesOnly(layout, model.config.vocab_size)]), **kw,
    )
    return [row + [layout.eoi] for row in out[:, ids.shape[1]:].tolist()]


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _timed(fn, reqs, batch):
    _sync()
    t0 = time.perf_counter()
    tokens = [t for i in range(0, len(reqs), batch) for t in fn(reqs[i : i + batch])]
    _sync()
    return time.perf_counter() - t0, tokens


def _valid_images(layout: VocabLayout, tokens: list[list[int]]) -> bool:
    return all(len(t) == layout.tokens_per_image + 1 and bool(layout.is_image(torch.tensor(t[:-1])).all())
               and t[-1] == layout.eoi for t in tokens)


ENGINES = {  # name -> Engine options (the Jacobi window comes from --window)
    "eager": {},
    "compiled": {"compile": True},
    "compiled_jacobi": {"compile": True, "jacobi_window": None},
}


def versus_generate(model, layout, reqs, batch, window, repeats, engines_of=ENGINES):
    """Seconds for `reqs`, `batch` at a time: generate and each engine of ENGINES, alternating.

    The warm-up runs each once first (compiles for a new batch shape, allocator, kernels): the
    timings are of the steady state a sampling service or an RL loop runs in."""
    engines = {name: Engine(model, layout, **{k: (window if v is None else v) for k, v in kw.items()})
               for name, kw in engines_of.items()}
    runners = {"generate": lambda rs: generate_images(model, layout, rs)}
    runners.update({name: (lambda rs, e=e: [r.tokens for r in e.run(rs)]) for name, e in engines.items()})
    warmup = {}
    for name, fn in runners.items():
        t0 = time.perf_counter()
        fn(reqs[:batch])
        warmup[name] = round(time.perf_counter() - t0, 2)
    best = {name: float("inf") for name in runners}
    for _ in range(repeats):
        for name, fn in runners.items():
            dt, tokens = _timed(fn, reqs, batch)
            if not _valid_images(layout, tokens):
                raise RuntimeError(f"{name} produced an invalid image span")
            best[name] = min(best[name], dt)
    row = {"batch": batch, "images": len(reqs), "cfg_scale": reqs[0].cfg_scale, "window": window,
           "seconds": best, "warmup_s": warmup, "speedup": {name: best["generate"] / best[name] for name in engines}}
    if "compiled_jacobi" in engines:
        jac = engines["compiled_jacobi"]
        row["jacobi_max_rows"] = jac.jacobi_max_rows
        row["draft_acceptance"] = jac.stats.accepted_drafts / jac.stats.drafted if jac.stats.drafted else None
    return row
