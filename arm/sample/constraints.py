"""Which tokens may come next: the grammar of the unified vocabulary, as boolean masks.

A request continues either an image span (its context ends with <boi>) or text. Inside an image
span only image-code tokens are allowed for exactly h*w positions, then <eoi> is the only choice,
so every image span decodes to a valid h x w grid. Text allows text tokens and <eos>.
The allowed set at an output position depends only on the request's mode and the position, not
on the tokens drawn, which lets a speculative window know every position's grammar in advance.
"""

from __future__ import annotations

from typing import Literal

import torch

from arm.text.vocab import VocabLayout

Mode = Literal["image", "text"]


class Grammar:
    def __init__(self, layout: VocabLayout, vocab_size: int | None = None, device: torch.device | str = "cpu"):
        v = vocab_size or layout.vocab_size
        if v < layout.vocab_size:
            raise ValueError(f"model vocabulary {v} is smaller than the layout's {layout.vocab_size}")
        self.layout = layout
        ids = torch.arange(v, device=device)
        self.text = (ids < layout.n_text) | (ids == layout.eos)
        self.image = (ids >= layout.image_offset) & (ids < layout.vocab_size)
        self.end_image = ids == layout.eoi

    def mode_of(self, prompt: list[int]) -> Mode:
        return "image" if prompt and prompt[-1] == self.layout.boi else "text"

    def length(self, mode: Mode, max_new_tokens: int) -> int:
        """Output positions a request may produce (an image: h*w codes + <eoi>)."""
        return self.layout.tokens_per_image + 1 if mode == "image" else max_new_tokens

    def allowed(self, mode: Mode, position: int) -> torch.Tensor:
        if mode == "image":
            return self.image if position < self.layout.tokens_per_image else self.end_image
        return self.text

    def forced(self, mode: Mode, position: int) -> int | None:
        """The token at `position` when the grammar leaves exactly one choice (no forward needed)."""
        if mode == "image" and position == self.layout.tokens_per_image:
            return self.layout.eoi
        return None

    def is_final(self, mode: Mode, token: int, position: int, max_new_tokens: int) -> bool:
        if mode == "image":
            return token == self.layout.eoi
        return token == self.layout.eos or position + 1 >= max_new_tokens
