"""Which tokens may come next: the grammar of the unified vocabulary, as boolean masks.

A request continues either an image span (its context ends with the image head: <boi>, or
<boi> <grid_HxW> when the model has several aspect buckets) or text. Inside an image span only
image-code tokens are allowed for exactly h*w positions of the head's grid, then <eoi> is the
only choice, so every image span decodes to a valid h x w grid. Text allows text tokens and <eos>.
The allowed set at an output position depends only on the request's mode, its grid and the
position, not on the tokens drawn, which lets a speculative window know every position's grammar
in advance.

Each allowed set lies inside a contiguous id span (`Span`): the sampler reads logits, draws
noise and takes the argmax over that span only, not over the whole vocabulary (at 7b the image
codes are ~16k of ~167k ids).
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch

from arm.text.vocab import VocabLayout

Mode = Literal["image", "text"]


class Span(NamedTuple):
    """Allowed ids lie in [lo, hi); `mask` [hi - lo] marks which ones, None when all of them are."""

    lo: int
    hi: int
    mask: torch.Tensor | None

    @property
    def width(self) -> int:
        return self.hi - self.lo


class Grammar:
    def __init__(self, layout: VocabLayout, vocab_size: int | None = None, device: torch.device | str = "cpu"):
        v = vocab_size or layout.vocab_size
        if v < layout.vocab_size:
            raise ValueError(f"model vocabulary {v} is smaller than the layout's {layout.vocab_size}")
        self.layout = layout
        # text ids, then the specials up to <eos>: one span, with <pad>/<bos> masked inside it
        text_hi = max(layout.n_text, layout.eos + 1)
        ids = torch.arange(text_hi, device=device)
        self.text_span = Span(0, text_hi, (ids < layout.n_text) | (ids == layout.eos))
        self.image_span = Span(layout.image_offset, layout.vocab_size, None)
        self.end_image_span = Span(layout.eoi, layout.eoi + 1, None)

    def mode_of(self, prompt: list[int]) -> Mode:
        last = prompt[-1] if prompt else None
        return "image" if last == self.layout.boi or (last is not None and self.layout.grid_of_token(last)) else "text"

    def image_codes(self, prompt: list[int]) -> int:
        """Codes an image request draws: h*w of the grid its prompt's image head names."""
        grid = self.layout.grid_of_token(prompt[-1]) if prompt else None
        if grid is None and self.layout.multi_grid:
            raise ValueError("an image prompt of a model with several grids must end with <boi> <grid_HxW>")
        return self.layout.n_codes(grid)

    def length(self, mode: Mode, max_new_tokens: int, n_codes: int) -> int:
        """Output positions a request may produce (an image: n_codes codes + <eoi>)."""
        return n_codes + 1 if mode == "image" else max_new_tokens

    def span(self, mode: Mode, position: int, n_codes: int) -> Span:
        """The ids allowed at output `position` of a request of `mode` (an image of n_codes codes)."""
        if mode == "image":
            return self.image_span if position < n_codes else self.end_image_span
        return self.text_span

    def widest(self, mode: Mode) -> int:
        """The widest span a request of this mode draws from (the width of its noise rows)."""
        return self.image_span.width if mode == "image" else self.text_span.width

    def forced(self, mode: Mode, position: int, n_codes: int) -> int | None:
        """The token at `position` when the grammar leaves exactly one choice (no forward needed)."""
        if mode == "image" and position == n_codes:
            return self.layout.eoi
        return None

    def is_final(self, mode: Mode, token: int, position: int, max_new_tokens: int) -> bool:
        if mode == "image":
            return token == self.layout.eoi
        return token == self.layout.eos or position + 1 >= max_new_tokens
