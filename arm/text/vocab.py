"""The unified vocabulary layout (DESIGN §4): text tokens, then special tokens, then image codes.

The layout is written into every model dir (`vocab_layout.json`) so that sampling, RL, eval and
serving read it from one place.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from arm.io import atomic_write_json

SPECIAL_TOKENS: tuple[str, ...] = ("<pad>", "<bos>", "<eos>", "<sep>", "<boi>", "<eoi>", "<uncond>")
LAYOUT_FILE = "vocab_layout.json"


@dataclass(frozen=True)
class VocabLayout:
    n_text: int  # text token ids are [0, n_text)
    codebook_size: int  # image code c is token image_offset + c
    grid: tuple[int, int]  # image tokens per image = grid[0] * grid[1]
    levels: tuple[int, ...]  # FSQ levels; product == codebook_size

    def __post_init__(self) -> None:
        prod = 1
        for lv in self.levels:
            prod *= lv
        if prod != self.codebook_size:
            raise ValueError(f"FSQ levels {self.levels} give {prod} codes, layout says {self.codebook_size}")

    @property
    def special_offset(self) -> int:
        return self.n_text

    @property
    def image_offset(self) -> int:
        return self.n_text + len(SPECIAL_TOKENS)

    @property
    def vocab_size(self) -> int:
        return self.image_offset + self.codebook_size

    @property
    def tokens_per_image(self) -> int:
        return self.grid[0] * self.grid[1]

    def special(self, name: str) -> int:
        try:
            return self.special_offset + SPECIAL_TOKENS.index(name)
        except ValueError:
            raise KeyError(f"unknown special token {name!r}; known: {SPECIAL_TOKENS}") from None

    @property
    def pad(self) -> int:
        return self.special("<pad>")

    @property
    def bos(self) -> int:
        return self.special("<bos>")

    @property
    def eos(self) -> int:
        return self.special("<eos>")

    @property
    def sep(self) -> int:
        return self.special("<sep>")

    @property
    def boi(self) -> int:
        return self.special("<boi>")

    @property
    def eoi(self) -> int:
        return self.special("<eoi>")

    @property
    def uncond(self) -> int:
        return self.special("<uncond>")

    def image_tokens(self, codes: torch.Tensor) -> torch.Tensor:
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.codebook_size):
            raise ValueError(f"image codes must lie in [0, {self.codebook_size})")
        return codes.long() + self.image_offset

    def codes(self, tokens: torch.Tensor) -> torch.Tensor:
        if not bool(self.is_image(tokens).all()):
            raise ValueError("not every token is an image token")
        return tokens.long() - self.image_offset

    def is_image(self, tokens: torch.Tensor) -> torch.Tensor:
        return (tokens >= self.image_offset) & (tokens < self.vocab_size)

    def is_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens < self.n_text

    def to_json(self) -> dict:
        d = asdict(self)
        d.update(
            special={name: self.special(name) for name in SPECIAL_TOKENS},
            image_offset=self.image_offset,
            vocab_size=self.vocab_size,
        )
        return d

    @staticmethod
    def from_json(d: dict) -> "VocabLayout":
        layout = VocabLayout(int(d["n_text"]), int(d["codebook_size"]), tuple(d["grid"]), tuple(d["levels"]))
        if "vocab_size" in d and d["vocab_size"] != layout.vocab_size:
            raise ValueError(f"layout file says vocab_size {d['vocab_size']}, computed {layout.vocab_size}")
        return layout

    def save(self, directory: str | Path) -> Path:
        return atomic_write_json(Path(directory) / LAYOUT_FILE, self.to_json())

    @staticmethod
    def load(directory: str | Path) -> "VocabLayout":
        path = Path(directory) / LAYOUT_FILE
        try:
            return VocabLayout.from_json(json.loads(path.read_text()))
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: no vocabulary layout (is this an ARM model dir?)") from None
