"""The unified vocabulary layout (DESIGN §4): text tokens, then special tokens, then image codes.

Images of more than one aspect ratio (a tokenizer with several grid buckets, `grids`) add one
special token per grid, `<grid_HxW>`, after the fixed specials: every image span then opens with
`<boi> <grid_HxW>` so the sequence says how its codes fold into rows (Lumina-mGPT and Emu3 write
the size into the sequence the same way). A single-grid layout has no grid tokens, so square-only
models keep their ids and sequences. Grid tokens sit among the specials, before the image codes,
because factorized code embeddings (arm.model.factorized) treat every id from `image_offset` on
as a code.

The layout is written into every model dir (`vocab_layout.json`) so that sampling, RL, eval and
serving read it from one place.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from arm.io import atomic_write_json

SPECIAL_TOKENS: tuple[str, ...] = ("<pad>", "<bos>", "<eos>", "<sep>", "<boi>", "<eoi>", "<uncond>")
LAYOUT_FILE = "vocab_layout.json"


def grid_token_name(grid: Sequence[int]) -> str:
    return f"<grid_{int(grid[0])}x{int(grid[1])}>"


@dataclass(frozen=True)
class VocabLayout:
    n_text: int  # text token ids are [0, n_text)
    codebook_size: int  # image code c is token image_offset + c
    grid: tuple[int, int]  # image tokens per image = grid[0] * grid[1]
    levels: tuple[int, ...]  # FSQ levels; product == codebook_size
    grids: tuple[tuple[int, int], ...] = field(default=())  # every (h, w) bucket, `grid` first; () = (grid,)

    def __post_init__(self) -> None:
        grids = tuple(tuple(int(v) for v in g) for g in (self.grids or (self.grid,)))
        object.__setattr__(self, "grid", tuple(int(v) for v in self.grid))
        object.__setattr__(self, "grids", grids)
        if grids[0] != self.grid:
            raise ValueError(f"grids {list(grids)} must start with the default grid {self.grid}")
        if len(set(grids)) != len(grids) or any(len(g) != 2 or min(g) < 1 for g in grids):
            raise ValueError(f"grids {list(grids)}: expected distinct (h, w) pairs of positive sizes")
        prod = 1
        for lv in self.levels:
            prod *= lv
        if prod != self.codebook_size:
            raise ValueError(f"FSQ levels {self.levels} give {prod} codes, layout says {self.codebook_size}")

    @property
    def special_offset(self) -> int:
        return self.n_text

    @property
    def specials(self) -> tuple[str, ...]:
        """Every special token name in id order: the fixed ones, then one per grid (several grids only)."""
        return SPECIAL_TOKENS + tuple(grid_token_name(g) for g in self.grids if self.multi_grid)

    @property
    def multi_grid(self) -> bool:
        return len(self.grids) > 1

    @property
    def image_offset(self) -> int:
        return self.n_text + len(self.specials)

    @property
    def vocab_size(self) -> int:
        return self.image_offset + self.codebook_size

    @property
    def tokens_per_image(self) -> int:
        """Codes of an image at the default grid (`n_codes(grid)` for another bucket)."""
        return self.grid[0] * self.grid[1]

    @property
    def max_tokens_per_image(self) -> int:
        """Codes of the largest bucket: what sequence and memory budgets must hold."""
        return max(h * w for h, w in self.grids)

    @property
    def image_span_tokens(self) -> int:
        """Tokens of the longest image span: <boi>, the grid token if any, codes, <eoi>."""
        return self.max_tokens_per_image + (3 if self.multi_grid else 2)

    def check_grid(self, grid: Sequence[int] | None) -> tuple[int, int]:
        """`grid` as a tuple (None: the default grid); a grid that is not a bucket is an error."""
        g = self.grid if grid is None else tuple(int(v) for v in grid)
        if g not in self.grids:
            raise ValueError(f"grid {list(g)} is not one of this model's grids {[list(x) for x in self.grids]}")
        return g

    def n_codes(self, grid: Sequence[int] | None = None) -> int:
        h, w = self.check_grid(grid)
        return h * w

    def grid_token(self, grid: Sequence[int] | None) -> int | None:
        """The `<grid_HxW>` id that opens an image of `grid`; None when the layout has one grid."""
        g = self.check_grid(grid)
        return self.special(grid_token_name(g)) if self.multi_grid else None

    def grid_of_token(self, token: int) -> tuple[int, int] | None:
        """The grid a `<grid_HxW>` id names, else None."""
        first = self.special_offset + len(SPECIAL_TOKENS)
        return self.grids[token - first] if self.multi_grid and first <= token < self.image_offset else None

    def special(self, name: str) -> int:
        try:
            return self.special_offset + self.specials.index(name)
        except ValueError:
            raise KeyError(f"unknown special token {name!r}; known: {self.specials}") from None

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
        if not self.multi_grid:
            del d["grids"]  # a one-grid layout file stays as it was before grids existed
        d.update(
            special={name: self.special(name) for name in self.specials},
            image_offset=self.image_offset,
            vocab_size=self.vocab_size,
        )
        return d

    @staticmethod
    def from_json(d: dict) -> "VocabLayout":
        grids = tuple(tuple(g) for g in d.get("grids") or ())  # layouts saved before grids: one grid
        layout = VocabLayout(int(d["n_text"]), int(d["codebook_size"]), tuple(d["grid"]), tuple(d["levels"]), grids)
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
