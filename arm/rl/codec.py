"""The image side of RL: scenes -> codes (prompts), codes -> images (rewards), images -> codes.

A model dir's manifest names its visual tokenizer. Two kinds exist:
* a learned one (arm.tokenizer.VisualTokenizer, a dir): decode through its pixel decoder, and
  score text-image alignment with its contrastive head;
* the perfect shapes tokenizer (`kind: oracle`, arm.train.perfect): one code per grid cell, so a
  code grid decodes to a clean render of the scene it names; it has no contrastive head.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from arm.config import WorldConfig
from arm.data.oracle import parse
from arm.data.shapes import Scene, render
from arm.sample.images import to_pil
from arm.train.perfect import PerfectTokenizer


class CodecError(ValueError):
    """A model dir whose visual tokenizer cannot serve RL; the message names the dir and why."""


class OracleCodec:
    kind = "oracle"
    has_alignment = False

    def __init__(self, world: WorldConfig) -> None:
        self.world = world
        self.perfect = PerfectTokenizer(world)
        self.codebook_size = self.perfect.codebook_size
        self.grid = self.perfect.grid

    def encode_scenes(self, scenes: Sequence[Scene]) -> torch.Tensor:
        return torch.tensor([self.perfect.encode_scene(s) for s in scenes], dtype=torch.long)

    def decode(self, codes: torch.Tensor) -> list[Image.Image]:
        # a cell whose code names no valid object draws nothing: the consistency reward sees it
        return [render(self.perfect.decode_scene(row.tolist())[0], self.world) for row in codes]

    def encode_images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        return self.encode_scenes([parse(im, self.world) for im in images])

    def alignment(self, codes: torch.Tensor, texts: Sequence[str]) -> torch.Tensor:
        raise CodecError("the oracle tokenizer has no contrastive head: give the `alignment` reward weight 0")


class OracleVisualTokenizer:
    """The perfect shapes tokenizer behind the VisualTokenizer interface the sampling pipeline and
    the evaluate stage use (`encode`, `decode`, `grid`, `codebook_size`), so a model trained on
    oracle codes can be sampled and benchmarked: ArmPipeline(model, tok, layout, OracleVisualTokenizer(world))."""

    def __init__(self, world: WorldConfig) -> None:
        self.codec = OracleCodec(world)
        self.grid = self.codec.grid
        self.codebook_size = self.codec.codebook_size
        self.levels = list(self.codec.perfect.levels)

    def encode(self, images) -> torch.Tensor:
        return self.codec.encode_images([_pil(im) for im in images]).view(len(images), *self.grid)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        arrs = [torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0) for im in self.codec.decode(codes.reshape(codes.shape[0], -1))]
        return torch.stack(arrs).permute(0, 3, 1, 2)


def _pil(image) -> Image.Image:
    from arm.sample.images import as_pil

    return as_pil(image)


class LearnedCodec:
    kind = "learned"
    has_alignment = True

    def __init__(self, tokenizer, world: WorldConfig) -> None:
        self.vt = tokenizer
        self.world = world
        self.codebook_size = tokenizer.codebook_size
        self.grid = tuple(tokenizer.grid)

    def encode_scenes(self, scenes: Sequence[Scene]) -> torch.Tensor:
        return self.encode_images([render(s, self.world) for s in scenes])

    def decode(self, codes: torch.Tensor) -> list[Image.Image]:
        h, w = self.grid
        return [to_pil(p) for p in self.vt.decode(codes.reshape(-1, h, w).long())]

    def encode_images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        return self.vt.encode(list(images)).reshape(len(images), -1).long()

    @torch.no_grad()
    def alignment(self, codes: torch.Tensor, texts: Sequence[str]) -> torch.Tensor:
        """The contrastive head's match probability sigmoid(t * cos + b) of each (codes_i, text_i)."""
        h, w = self.grid
        img = self.vt.embed_codes(codes.reshape(-1, h, w).long())
        txt = self.vt.embed_texts(list(texts)).to(img.dtype)
        cos = (img * txt).sum(-1)
        return torch.sigmoid(cos * self.vt.logit_scale.exp().cpu() + self.vt.logit_bias.cpu()).float()


def load_codec(model_dir: str | Path, manifest: dict, world: WorldConfig, device: str = "cpu"):
    """The codec a model dir's manifest names, checked against the layout's world and grid."""
    ref = manifest.get("visual_tokenizer")
    if isinstance(ref, dict) and ref.get("kind") == "oracle":
        if ref.get("world") is not None and WorldConfig.model_validate(ref["world"]) != world:
            raise CodecError(
                f"{model_dir}: the model was trained on the oracle tokenizer of another world "
                f"({json.dumps(ref['world'], sort_keys=True)}); its codes mean nothing in this one"
            )
        return OracleCodec(world)
    from arm.sample.pipeline import visual_tokenizer_dir

    try:
        vt_dir = visual_tokenizer_dir(model_dir)
    except (FileNotFoundError, ValueError) as e:
        raise CodecError(str(e)) from None
    if vt_dir is None:
        raise CodecError(f"{model_dir}/manifest.json names no visual tokenizer: RL cannot turn codes into images")
    from arm.tokenizer.model import VisualTokenizer

    return LearnedCodec(VisualTokenizer.from_pretrained(vt_dir, device=device), world)
