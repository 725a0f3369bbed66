"""The semantic FSQ visual tokenizer (DESIGN §1, the ARM paper's first pillar).

pixels -> SigLIP vision encoder -> projection -> FSQ (codes) -> up-projection, read by four heads:
  pixel decoder (reconstruction, per token), and through a post-quant transformer (features F)
  the distillation head (teacher features), the alignment head (pooled F -> text-embedding
  space, sigmoid contrastive) and a caption decoder.
Only the codes leave the tokenizer; every head reads them through F, so every loss shapes
what a code means.
"""

from __future__ import annotations

import json
import math
import types
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from huggingface_hub import PyTorchModelHubMixin
from torch import nn
from vector_quantize_pytorch import FSQ

from arm import device as devices
from arm.io import atomic_path, read_saved_config
from arm.tokenizer.buckets import Buckets
from arm.tokenizer.config import TokenizerConfig
from arm.tokenizer.images import pil_list, to_pixels
from arm.tokenizer.vocab import PAD, CaptionVocab

FORMAT = "arm-visual-tokenizer"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
FLOW_DIR = "flow_decoder"  # the rectified-flow decoder, saved inside the tokenizer it was trained on
DECODERS = ("per_token", "flow")

# `auto` is resolved in one place (arm.device); the tokenizer stages import it from here.
resolve_device = devices.resolve_device


def _block(width: int, heads: int, dropout: float) -> nn.TransformerEncoderLayer:
    return nn.TransformerEncoderLayer(
        width, heads, 4 * width, dropout=dropout, activation="gelu", batch_first=True, norm_first=True
    )


class PixelDecoder(nn.Module):
    """Per-token MLP to a patch of pixels (the shapes world puts one object per patch), plus an
    optional small conv refiner that smooths across patch borders for natural images. The
    tokens are laid out on the grid given at each call, so one decoder serves every bucket."""

    def __init__(self, width: int, hidden: int, patch: int, conv_channels: int):
        super().__init__()
        self.patch = patch
        out_ch = conv_channels or 3
        self.mlp = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, patch * patch * out_ch))
        self.out_ch = out_ch
        self.refine = None
        if conv_channels:
            c = conv_channels
            self.refine = nn.Sequential(
                nn.Conv2d(c, c, 3, padding=1), nn.GELU(), nn.Conv2d(c, c, 3, padding=1), nn.GELU(), nn.Conv2d(c, 3, 1)
            )

    def forward(self, feats: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        b = feats.shape[0]
        (h, w), p, c = grid, self.patch, self.out_ch
        x = self.mlp(feats).view(b, h, w, p, p, c).permute(0, 5, 1, 3, 2, 4).reshape(b, c, h * p, w * p)
        if self.refine is not None:
            x = self.refine(x)
        # A linear output (centred on mid-grey), clamped only at inference: a sigmoid saturates
        # on the pure-white background and starves every other pixel of gradient.
        return x + 0.5


class AttentionPool(nn.Module):
    """Multihead attention pooling (a learned query), as in SigLIP's MAP head."""

    def __init__(self, width: int, heads: int, out_dim: int):
        super().__init__()
        self.query = nn.Parameter(torch.randn(1, 1, width) * 0.02)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.norm = nn.LayerNorm(width)
        self.proj = nn.Linear(width, out_dim)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        q = self.query.expand(feats.shape[0], -1, -1)
        pooled, _ = self.attn(q, feats, feats, need_weights=False)
        return self.proj(self.norm(pooled[:, 0] + feats.mean(1)))


class CaptionHead(nn.Module):
    """A small autoregressive transformer decoder that cross-attends to the token features."""

    def __init__(self, width: int, hidden: int, layers: int, heads: int, vocab: int, max_length: int):
        super().__init__()
        self.memory = nn.Linear(width, hidden)
        self.embed = nn.Embedding(vocab, hidden, padding_idx=PAD)
        self.pos = nn.Parameter(torch.randn(1, max_length, hidden) * 0.02)
        layer = nn.TransformerDecoderLayer(hidden, heads, 4 * hidden, dropout=0.0, activation="gelu", batch_first=True, norm_first=True)
        self.decoder = nn.TransformerDecoder(layer, layers)
        self.norm = nn.LayerNorm(hidden)
        self.out = nn.Linear(hidden, vocab)
        self.max_length = max_length

    def forward(self, feats: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        n = tokens.shape[1]
        x = self.embed(tokens) + self.pos[:, :n]
        mask = nn.Transformer.generate_square_subsequent_mask(n, device=tokens.device, dtype=x.dtype)
        y = self.decoder(x, self.memory(feats), tgt_mask=mask, tgt_is_causal=True)
        return self.out(self.norm(y))


# The card PyTorchModelHubMixin writes beside the weights (its default is a stub of "More
# Information Needed"); rendered with huggingface_hub's ModelCard.from_template.
CARD_TEMPLATE = """---
{{ card_data }}
---

# ARM visual tokenizer

A semantic FSQ visual tokenizer: a {{ image_size }} px RGB image becomes a {{ grid }}x{{ grid }} grid
of codes in [0, {{ codebook_size }}) (FSQ levels {{ levels }}), and codes decode back to pixels.
{% if grids|length > 1 %}Aspect buckets: an image is encoded on the (h, w) token grid nearest its own aspect ratio, one of
{{ grids }} ({{ patch_size }} px per token side), fitted to it by `{{ fit }}`.
{% endif %}Encoder: SigLIP vision tower{% if encoder_source %} from `{{ encoder_source }}`{% endif %},
{% if encoder_window %}seeing {{ encoder_window }}x{{ encoder_window }} patches at a time{% else %}seeing the whole image{% endif %}.

```python
from arm.tokenizer.model import VisualTokenizer

tok = VisualTokenizer.from_pretrained("{{ path }}")
codes = tok.encode(images)   # list of PIL images -> LongTensor [B, h, w]{% if grids|length == 1 %} = [B, {{ grid }}, {{ grid }}]{% endif %}
pixels = tok.decode(codes)   # -> FloatTensor [B, 3, h*{{ patch_size }}, w*{{ patch_size }}] in [0, 1]
{% if grids|length > 1 %}each = tok.encode_each(images)  # images of mixed aspect: one [h, w] grid each
{% endif %}```

`config.json` is the constructor's `config`; the weights are `model.safetensors`
(huggingface_hub's `PyTorchModelHubMixin`).
"""


def _undo_zero_init_leak() -> None:
    """Lets the class statement below pass its keywords (library_name=...) to the hub mixin.

    DeepSpeed 0.19's zero.Init saves `nn.Module.__init_subclass__` on entry (object's, bound to
    Module) and assigns it back on exit, so after any ZeRO-3 model build nn.Module owns a bound
    object.__init_subclass__ that refuses class keywords and never reaches the mixin's hook. The
    GPU smoke (pretrain, then RL, then serving) imported this module only after that and failed.
    Inside a zero.Init context the attribute is DeepSpeed's classmethod, which is left alone."""
    own = nn.Module.__dict__.get("__init_subclass__")
    if isinstance(own, types.BuiltinMethodType) and own.__self__ is nn.Module:
        del nn.Module.__init_subclass__


_undo_zero_init_leak()


class VisualTokenizer(
    nn.Module,
    PyTorchModelHubMixin,
    library_name="arm",
    tags=["arm", "visual-tokenizer", "fsq", "image-tokenization"],
    model_card_template=CARD_TEMPLATE,
):
    """Images <-> discrete codes [B, h, w] in [0, codebook_size). See the module docstring.

    Saved and loaded by huggingface_hub's PyTorchModelHubMixin: `config` (the init argument) is
    config.json, the weights model.safetensors, plus a model card. Loading never needs the hub: a
    pretrained encoder's weights are part of model.safetensors.
    """

    def __init__(self, config: dict[str, Any]):
        super().__init__()
        from transformers import SiglipVisionConfig, SiglipVisionModel

        self.spec = json.loads(json.dumps(config))  # a private plain-JSON copy
        s = self.spec
        self._levels = [int(v) for v in s["levels"]]
        self._image_size = int(s["image_size"])
        self._patch = int(s["patch_size"])
        side = self._image_size // self._patch
        self._grid = (side, side)
        # The aspect buckets' (h, w) grids, the square first; a tokenizer saved before buckets
        # existed has the square alone.
        self._buckets = Buckets(s.get("grids", [[side, side]]), self._patch, s.get("fit", "crop"))
        if self._buckets.grids[0] != self._grid:
            raise ValueError(f"grids {self._buckets.grids}: the first must be the square default grid {self._grid}")
        width = int(s["hidden_size"])
        enc_cfg = SiglipVisionConfig(**s["encoder_config"])
        # `encoder_window`: the encoder sees windows of w x w patches (null: the whole image).
        self._window = s.get("encoder_window")
        view = self._image_size if self._window is None else self._window * self._patch
        bad = [g for g in self.grids if self._window is not None and (g[0] % self._window or g[1] % self._window)]
        if bad:
            raise ValueError(f"encoder window {self._window} must divide both sides of every token grid, not {bad[0]}")
        self._native = enc_cfg.image_size // enc_cfg.patch_size  # the encoder's own (square) patch grid
        if enc_cfg.image_size != view or enc_cfg.patch_size != self._patch:
            raise ValueError(
                f"encoder expects {enc_cfg.image_size}px images with {enc_cfg.patch_size}px patches, "
                f"the tokenizer is configured for {view}/{self._patch}"
            )
        self.encoder = SiglipVisionModel(enc_cfg)
        self.encoder_frozen = bool(s["encoder_frozen"])
        self.proj_in = nn.Linear(enc_cfg.hidden_size, len(self._levels))
        self.fsq = FSQ(levels=self._levels)
        self.up = nn.Linear(len(self._levels), width)
        # A learned vector per code, added to the pixel decoder's input: the decoder is then a
        # lookup as well as a smooth function of the FSQ vector, so neighbouring codes can
        # render unrelated templates exactly (a circle and a square one lattice step apart).
        self.code_embed = nn.Embedding(self.codebook_size, width)
        nn.init.zeros_(self.code_embed.weight)
        basis = torch.cumprod(torch.tensor([1, *self._levels[:-1]]), 0)
        self.register_buffer("_level_basis", basis, persistent=False)
        self.register_buffer("_level_counts", torch.tensor(self._levels), persistent=False)
        # One learned position per cell of the largest extents of all grids (row r, column c at
        # r * max_w + c): a grid reads its top-left h x w corner, so cell (r, c) means the same
        # place in every bucket, and a square-only tokenizer's table is what it always was.
        self._extent = (max(h for h, _ in self.grids), max(w for _, w in self.grids))
        self.pos = nn.Parameter(torch.randn(1, self._extent[0] * self._extent[1], width) * 0.02)
        self.post = nn.ModuleList([_block(width, int(s["heads"]), float(s["dropout"])) for _ in range(int(s["post_layers"]))])
        self.post_norm = nn.LayerNorm(width)
        self.pixel_decoder = PixelDecoder(width, int(s["decoder_hidden"]), self._patch, int(s["decoder_conv_channels"]))
        self.distill_head = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, int(s["distill_dim"])))
        n_states = int(s.get("scene_states", 0))
        self.scene_head = None
        if n_states:
            self.scene_head = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, width), nn.GELU(), nn.Linear(width, n_states))
        self.align_head = AttentionPool(width, int(s["heads"]), int(s["text_dim"]))
        # SigLIP's learned temperature and bias, initialised as in the paper (t = 10, b = -10).
        self.logit_scale = nn.Parameter(torch.tensor(math.log(10.0)))
        self.logit_bias = nn.Parameter(torch.tensor(-10.0))
        self.vocab = CaptionVocab(s["caption_vocab"])
        c = s["caption"]
        self.caption_head = CaptionHead(width, c["hidden_size"], c["layers"], c["heads"], len(self.vocab), c["max_length"])
        if self.encoder_frozen:
            self.encoder.requires_grad_(False)
        self._text_encoder = None
        # The flow decoder and where to find it: kept outside the module tree (a plain list), so
        # it never enters this tokenizer's state dict, optimizer or device moves.
        self._flow: list = []
        self._dir: Path | None = None

    # ------------------------------------------------------------------ construction

    @classmethod
    def build(
        cls, cfg: TokenizerConfig, *, caption_vocab: list[str], text_dim: int, distill_dim: int, scene_states: int = 0
    ) -> "VisualTokenizer":
        """A fresh tokenizer for training; loads the pretrained encoder when `encoder.pretrained` is set.

        `scene_states` > 0 adds the dense-caption head (arm.tokenizer.data.scene_cell_states classes)."""
        from transformers import SiglipVisionConfig, SiglipVisionModel

        pretrained = None
        if cfg.encoder.pretrained:
            pretrained = SiglipVisionModel.from_pretrained(cfg.encoder.pretrained)
            enc_cfg = pretrained.config.to_dict()
        else:
            e = cfg.encoder
            enc_cfg = SiglipVisionConfig(
                hidden_size=e.hidden_size,
                intermediate_size=int(e.hidden_size * e.mlp_ratio),
                num_hidden_layers=e.layers,
                num_attention_heads=e.heads,
                image_size=cfg.image_size if e.window is None else e.window * cfg.patch_size,
                patch_size=cfg.patch_size,
                vision_use_head=False,
            ).to_dict()
        keep = {
            "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_channels",
            "image_size", "patch_size", "hidden_act", "layer_norm_eps", "attention_dropout",
        }  # fmt: skip
        enc_cfg = {k: v for k, v in enc_cfg.items() if k in keep}
        enc_cfg["vision_use_head"] = False  # the tokenizer uses patch tokens; the pooling head is dead weight
        frozen = cfg.encoder.freeze if cfg.encoder.freeze is not None else pretrained is not None
        spec = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "image_size": cfg.image_size,
            "patch_size": cfg.patch_size,
            "levels": list(cfg.levels),
            "hidden_size": cfg.hidden_size,
            "post_layers": cfg.post_layers,
            "heads": cfg.heads,
            "decoder_hidden": cfg.decoder_hidden,
            "decoder_conv_channels": cfg.decoder_conv_channels,
            "decoder": cfg.decoder,
            "dropout": cfg.dropout,
            "encoder_config": enc_cfg,
            "encoder_source": cfg.encoder.pretrained,
            "encoder_window": cfg.encoder.window,
            "encoder_frozen": frozen,
            "grids": [list(g) for g in cfg.grids],
            "fit": cfg.aspect.fit,
            "distill_dim": distill_dim,
            "scene_states": scene_states,
            "teacher": cfg.teacher.model_dump(mode="json"),
            "text_dim": text_dim,
            "text_encoder": cfg.text_encoder.model_dump(mode="json"),
            "caption": cfg.caption.model_dump(mode="json"),
            "caption_vocab": list(caption_vocab),
        }
        model = cls(spec)
        if pretrained is not None:
            missing, unexpected = model.encoder.load_state_dict(pretrained.state_dict(), strict=False)
            if missing:
                raise ValueError(f"pretrained encoder {cfg.encoder.pretrained}: missing weights {missing[:5]}")
            if frozen:
                model.encoder.requires_grad_(False)
        return model

    # ------------------------------------------------------------------ properties

    @property
    def levels(self) -> list[int]:
        return list(self._levels)

    @property
    def codebook_size(self) -> int:
        return math.prod(self._levels)

    @property
    def grid(self) -> tuple[int, int]:
        """The square default grid (image_size / patch_size per side)."""
        return self._grid

    @property
    def grids(self) -> list[tuple[int, int]]:
        """Every (h, w) token grid this tokenizer encodes on, the square default first."""
        return list(self._buckets.grids)

    @property
    def buckets(self) -> Buckets:
        return self._buckets

    @property
    def image_size(self) -> int:
        return self._image_size

    @property
    def patch_size(self) -> int:
        return self._patch

    @property
    def device(self) -> torch.device:
        return self.proj_in.weight.device

    def train(self, mode: bool = True) -> "VisualTokenizer":
        super().train(mode)
        if self.encoder_frozen:
            self.encoder.eval()  # a frozen encoder keeps its inference behaviour
        return self

    # ------------------------------------------------------------------ the pipeline

    def grid_of(self, pixels: torch.Tensor) -> tuple[int, int]:
        """The token grid of pixels [B, 3, H, W]: one of `grids`, or a ValueError naming the size."""
        hp, wp = pixels.shape[-2:]
        if hp % self._patch or wp % self._patch:
            raise ValueError(f"pixels {hp}x{wp}: height and width must be multiples of the patch size {self._patch}")
        grid = (hp // self._patch, wp // self._patch)
        if grid not in self._buckets.grids:
            raise ValueError(f"pixels {hp}x{wp} make a {grid} token grid; this tokenizer's (h, w) grids are "
                             f"{self.grids} at {self._patch} px per token")
        return grid

    def pre_quant(self, pixels01: torch.Tensor) -> torch.Tensor:
        """pixels [B,3,H,W] in [0,1] (H, W of one of `grids`) -> continuous latents z [B, h*w, n_levels] (before FSQ)."""
        x = pixels01 * 2.0 - 1.0
        h, w = self.grid_of(x)
        if self._window is None:
            # the encoder's position table is for its own square grid: other grids interpolate it
            native = (h, w) == (self._native, self._native)
            return self.proj_in(self.encoder(pixel_values=x, interpolate_pos_encoding=not native).last_hidden_state)
        # Windows are encoded independently, so a window's tokens depend on its pixels only:
        # with window 1 a code describes its own cell, the same wherever the cell sits.
        b, k, p = x.shape[0], self._window, self._patch
        wh, ww = h // k, w // k
        tiles = x.reshape(b, 3, wh, k * p, ww, k * p).permute(0, 2, 4, 1, 3, 5).reshape(b * wh * ww, 3, k * p, k * p)
        hidden = self.encoder(pixel_values=tiles).last_hidden_state  # [b*wh*ww, k*k, D]
        d = hidden.shape[-1]
        hidden = hidden.reshape(b, wh, ww, k, k, d).permute(0, 1, 3, 2, 4, 5).reshape(b, h * w, d)
        return self.proj_in(hidden)

    def quantize(self, pixels01: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """pixels [B,3,H,W] in [0,1] -> (quantized [B, h*w, n_levels] in [-1, 1], codes [B, h*w])."""
        q, codes = self.fsq(self.pre_quant(pixels01))
        return q, codes.long()

    def soft_levels(self, z: torch.Tensor, temperature: float) -> list[torch.Tensor]:
        """Per FSQ dimension, a soft assignment of z to that dimension's levels: [..., L_i] each.

        FSQ's bound (tanh) puts level l of dimension i at integer l - L_i // 2 in these units,
        so a Gaussian kernel on the distance to each integer is a soft version of the rounding.
        """
        out = []
        for i, lv in enumerate(self._levels):
            half = (lv - 1) * (1 + 1e-3) / 2
            offset = 0.5 if lv % 2 == 0 else 0.0
            u = torch.tanh(z[..., i] + math.atanh(offset / half)) * half - offset
            grid = torch.arange(lv, device=z.device, dtype=z.dtype) - lv // 2
            out.append(torch.softmax(-((u.unsqueeze(-1) - grid) ** 2) / temperature, dim=-1))
        return out

    def reconstruct(self, q: torch.Tensor, grid: tuple[int, int] | None = None) -> torch.Tensor:
        """Quantized vectors [B, h*w, n_levels] on `grid` (default: the square) -> pixels
        [B, 3, h*patch, w*patch], ~[0, 1] (unclamped; `decode` clamps).

        Each token is decoded on its own, without its position or its neighbours: a code must
        then stand for the same pixels wherever it appears, which is what lets one image token
        carry one object for the AR model (an optional conv refiner adds local context only).
        """
        grid = self._token_grid(q, grid)
        return self.pixel_decoder(self.up(q) + self.code_embed(self.lattice_codes(q)), grid)

    def lattice_codes(self, q: torch.Tensor) -> torch.Tensor:
        """[..., n_levels] in FSQ units -> the code of the nearest lattice point [...] (exact on
        quantized vectors, where it equals FSQ's codes_to_indices; rounds continuous ones)."""
        half = self._level_counts // 2
        digits = torch.minimum((q * half + half).round().clamp(min=0), self._level_counts - 1)
        return (digits * self._level_basis).sum(-1).long()

    def features(self, q: torch.Tensor, grid: tuple[int, int] | None = None) -> torch.Tensor:
        """Quantized vectors [B, h*w, n_levels] on `grid` (default: the square) -> contextual
        features F [B, h*w, hidden] for the semantic heads (distillation, alignment, caption)."""
        h, w = self._token_grid(q, grid)
        pos = self.pos
        if (h, w) != self._extent:  # the grid's top-left corner of the position table
            pos = pos.view(1, *self._extent, -1)[:, :h, :w].reshape(1, h * w, -1)
        x = self.up(q) + pos
        for block in self.post:
            x = block(x)
        return self.post_norm(x)

    def cell_logits(self, q: torch.Tensor) -> torch.Tensor:
        """Quantized vectors [B, N, n_levels] -> scene-head logits [B, N, classes], token by token.

        Without context on purpose: the head must tell a cell's content from its code alone, so
        two contents (or a content and a natural-image patch) cannot share a code, which is what
        the per-token pixel decoder needs to draw each one exactly."""
        return self.scene_head(self.up(q))

    def _token_grid(self, q: torch.Tensor, grid: tuple[int, int] | None) -> tuple[int, int]:
        grid = self._grid if grid is None else self._buckets.check(grid)
        if q.shape[1] != grid[0] * grid[1]:
            raise ValueError(f"{q.shape[1]} tokens per image do not fill the {grid} grid; pass the codes' own grid")
        return grid

    def codes_to_quantized(self, codes: torch.Tensor) -> torch.Tensor:
        codes = self._check_codes(codes)
        return self.fsq.indices_to_codes(codes.reshape(codes.shape[0], -1))

    def codes_grid(self, codes: torch.Tensor) -> tuple[int, int]:
        """The grid of codes [B, h, w] (one of `grids`), or the square for flat codes [B, h*w]."""
        if not isinstance(codes, torch.Tensor):
            codes = torch.as_tensor(codes)
        if codes.ndim == 3:
            return self._buckets.check(codes.shape[1:])
        if codes.ndim == 2 and codes.shape[1] == self._grid[0] * self._grid[1]:
            return self._grid
        raise ValueError(f"codes of shape {tuple(codes.shape)}: expected [B, h, w] on one of the grids {self.grids}, "
                         f"or flat [B, {self._grid[0] * self._grid[1]}] on the square {self._grid}")

    def forward(self, pixels01: torch.Tensor) -> dict[str, torch.Tensor]:
        grid = self.grid_of(pixels01)
        z = self.pre_quant(pixels01)
        q, codes = self.fsq(z)
        feats = self.features(q, grid)
        return {"z": z, "q": q, "codes": codes.long(), "features": feats, "recon": self.reconstruct(q, grid)}

    def align(self, feats: torch.Tensor) -> torch.Tensor:
        """Shared features -> L2-normalised embedding in the text encoder's space."""
        return F.normalize(self.align_head(feats), dim=-1)

    # ------------------------------------------------------------------ public API

    def frame(self, images: Sequence[Any] | torch.Tensor, grid: tuple[int, int] | None = None
              ) -> tuple[torch.Tensor, tuple[int, int]]:
        """Images -> (pixels [B, 3, h*patch, w*patch] in [0, 1], the grid (h, w)) as encode sees them.

        A single-bucket tokenizer squashes every image to its square, as it always has. With
        buckets, PIL images are fitted (tokenizer.aspect.fit) to `grid`, by default the grid of
        their own aspect ratio, which must then be one for all; tensors are taken as framed
        already and only resized to the grid's pixels (by default the grid nearest their shape).
        """
        if grid is not None:
            grid = self._buckets.check(grid)
        if isinstance(images, (torch.Tensor, np.ndarray)):
            if grid is None:
                grid = self._grid
                if len(self.grids) > 1 and images.ndim == 4 and min(images.shape[-2:]) > 0:  # else to_pixels says what is wrong
                    grid = self._buckets.choose(images.shape[-1], images.shape[-2])
            return to_pixels(images, self._buckets.pixel_size(grid)), grid
        images = pil_list(images)
        if len(self.grids) == 1:
            return to_pixels(images, self._image_size), self._grid
        if grid is None:
            own = [self._buckets.choose(im.width, im.height) for im in images]
            odd = next((i for i, g in enumerate(own) if g != own[0]), None)
            if odd is not None:
                raise ValueError(f"images[{odd}] ({images[odd].width}x{images[odd].height} px) belongs to the {own[odd]} "
                                 f"grid, images[0] to {own[0]}: one batch has one grid; pass grid= to fit them all "
                                 f"to one, or encode_each(images) for each at its own")
            grid = own[0]
        framed = [self._buckets.fit(im, grid) for im in images]
        return to_pixels(framed, self._buckets.pixel_size(grid)), grid

    @torch.no_grad()
    def encode(self, images: Sequence[Any] | torch.Tensor, grid: tuple[int, int] | None = None) -> torch.Tensor:
        """Images (list of PIL, or [B,C,H,W] uint8 / float in [0,1]) -> LongTensor [B, h, w] on
        `grid` (default: their own bucket's; see `frame`)."""
        x, grid = self.frame(images, grid)
        _, codes = self.quantize(x.to(self.device))
        return codes.view(x.shape[0], *grid).cpu()

    @torch.no_grad()
    def encode_each(self, images: Sequence[Any]) -> list[torch.Tensor]:
        """PIL images of any aspect ratios -> one LongTensor [h, w] each, on its own bucket's
        grid (encoded a bucket at a time)."""
        images = pil_list(images)
        own = [self._grid if len(self.grids) == 1 else self._buckets.choose(im.width, im.height) for im in images]
        out: list[torch.Tensor] = [torch.empty(0)] * len(images)
        for grid in dict.fromkeys(own):
            idx = [i for i, g in enumerate(own) if g == grid]
            for i, codes in zip(idx, self.encode([images[i] for i in idx], grid)):
                out[i] = codes
        return out

    @property
    def decoder(self) -> str:
        """What renders codes by default: `per_token` or `flow` (tokenizer.decoder at training)."""
        return self.spec.get("decoder", "per_token")

    def attach_flow(self, flow) -> None:
        """Renders with `flow` (an arm.tokenizer.flow_decoder.FlowDecoder trained on this tokenizer)."""
        self._flow[:] = [flow]

    def flow_decoder(self):
        """The flow decoder: attached, or loaded from this tokenizer's `flow_decoder/` on first use."""
        if not self._flow:
            from arm.tokenizer.flow_decoder import FlowDecoder

            if self._dir is None or not (self._dir / FLOW_DIR).is_dir():
                where = self._dir / FLOW_DIR if self._dir is not None else "an attached decoder (attach_flow)"
                raise FileNotFoundError(f"flow decoder: {where} not found (train it with tokenizer.flow.train: true)")
            self._flow.append(FlowDecoder.load(self._dir / FLOW_DIR, self, device=self.device))
        return self._flow[0]

    @torch.no_grad()
    def decode(self, codes: torch.Tensor, decoder: str | None = None) -> torch.Tensor:
        """LongTensor [B, h, w] on any of `grids` (or flat [B, h*w] on the square) -> FloatTensor
        [B, 3, h*patch, w*patch] in [0, 1] (on CPU), drawn by `decoder` (default: the tokenizer's
        own); the flow decoder is deterministic (its seed)."""
        decoder = decoder or self.decoder
        if decoder not in DECODERS:
            raise ValueError(f"decoder {decoder!r}: expected one of {DECODERS}")
        grid = self.codes_grid(codes)
        q = self.codes_to_quantized(codes).to(self.device)
        if decoder == "flow":
            return self.flow_decoder().sample(q, grid=grid)
        return self.reconstruct(q, grid).clamp(0, 1).cpu()

    @torch.no_grad()
    def embed_images(self, images: Sequence[Any] | torch.Tensor, grid: tuple[int, int] | None = None) -> torch.Tensor:
        """The text-aligned embedding of images, through their codes: [B, text_dim], unit norm."""
        x, grid = self.frame(images, grid)
        q, _ = self.quantize(x.to(self.device))
        return self.align(self.features(q, grid)).cpu()

    @torch.no_grad()
    def embed_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """The same embedding straight from codes (no pixels): scores generated images cheaply."""
        grid = self.codes_grid(codes)
        q = self.codes_to_quantized(codes).to(self.device)
        return self.align(self.features(q, grid)).cpu()

    def text_encoder(self):
        if self._text_encoder is None:
            from arm.tokenizer.config import TextEncoderConfig
            from arm.tokenizer.text_encoder import TextEncoder

            self._text_encoder = TextEncoder(TextEncoderConfig(**self.spec["text_encoder"]), device=self.device)
        return self._text_encoder

    def embed_texts(self, texts: Sequence[str]) -> torch.Tensor:
        texts = list(texts)
        if not texts:
            raise ValueError("texts: empty list")
        bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
        if bad:
            raise TypeError(f"texts[{bad[0]}]: expected str, got {type(texts[bad[0]]).__name__}")
        return self.text_encoder().embed(texts)

    def similarity(self, images: Sequence[Any] | torch.Tensor, texts: Sequence[str]) -> torch.Tensor:
        """Cosine similarity [B_img, B_txt] between images (via their codes) and texts, in [-1, 1].

        `sigmoid(similarity * exp(logit_scale) + logit_bias)` is the trained match probability.
        """
        return self.embed_images(images) @ self.embed_texts(texts).T

    def similarity_codes(self, codes: torch.Tensor, texts: Sequence[str]) -> torch.Tensor:
        return self.embed_codes(codes) @ self.embed_texts(texts).T

    @torch.no_grad()
    def caption(self, codes: torch.Tensor, max_length: int | None = None) -> list[str]:
        """Greedy captions of code grids, from the caption head (for inspection)."""
        from arm.tokenizer.vocab import BOS, EOS

        feats = self.features(self.codes_to_quantized(codes).to(self.device), self.codes_grid(codes))
        n = min(max_length or self.caption_head.max_length, self.caption_head.max_length)
        tokens = torch.full((feats.shape[0], 1), BOS, dtype=torch.long, device=self.device)
        for _ in range(n - 1):
            nxt = self.caption_head(feats, tokens)[:, -1].argmax(-1, keepdim=True)
            tokens = torch.cat([tokens, nxt], 1)
            if bool((tokens == EOS).any(1).all()):
                break
        return [self.vocab.decode(row.tolist()) for row in tokens.cpu()]

    def codes_to_levels(self, codes: torch.Tensor) -> torch.Tensor:
        """Per-level digit of each code: LongTensor [..., n_levels], digit i in [0, levels[i])."""
        codes = self._check_codes(codes)
        basis = torch.tensor([math.prod(self._levels[:i]) for i in range(len(self._levels))], device=codes.device)
        levels = torch.tensor(self._levels, device=codes.device)
        return (codes.unsqueeze(-1) // basis) % levels

    def levels_to_codes(self, digits: torch.Tensor) -> torch.Tensor:
        """Inverse of `codes_to_levels`."""
        basis = torch.tensor([math.prod(self._levels[:i]) for i in range(len(self._levels))], device=digits.device)
        return (digits.long() * basis).sum(-1)

    def _check_codes(self, codes: torch.Tensor) -> torch.Tensor:
        if not isinstance(codes, torch.Tensor):
            codes = torch.as_tensor(codes)
        if codes.is_floating_point() or codes.is_complex() or codes.dtype == torch.bool:
            raise ValueError(f"codes: expected an integer tensor, got {codes.dtype}")
        if codes.numel() == 0:
            raise ValueError("codes: empty tensor")
        lo, hi = int(codes.min()), int(codes.max())
        if lo < 0 or hi >= self.codebook_size:
            raise ValueError(f"codes: values must lie in [0, {self.codebook_size}), got [{lo}, {hi}]")
        return codes.long()

    # ------------------------------------------------------------------ persistence
    # PyTorchModelHubMixin does the format (config.json from `config`, model.safetensors, README.md).
    # What it does not do, and these overrides add: an atomic write (its save writes into the target
    # in place), local-only loading with errors that name the path (it would try the hub for a
    # missing dir and fail on bad JSON with a bare decoder error), the format/version check, strict
    # weights, and the `device` the callers pass.

    def save_pretrained(self, save_directory: str | Path, **kwargs: Any) -> Path:
        """config.json + model.safetensors + README.md, written to a temp dir and renamed into place."""
        directory = Path(save_directory)
        with atomic_path(directory) as tmp:
            card = {"image_size": self._image_size, "grid": self._grid[0], "codebook_size": self.codebook_size,
                    "levels": self._levels, "encoder_source": self.spec.get("encoder_source"),
                    "encoder_window": self._window, "path": str(directory), "grids": self.grids,
                    "patch_size": self._patch, "fit": self._buckets.fit_mode}
            super().save_pretrained(tmp, config=self.spec, model_card_kwargs=card, **kwargs)
        return directory

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, *, device: str | torch.device = "cpu",
                        **kwargs: Any) -> "VisualTokenizer":
        """A saved tokenizer from a local dir (never the hub), on `device`, in eval mode."""
        directory = Path(pretrained_model_name_or_path)
        read_saved_config(directory, "tokenizer", FORMAT, FORMAT_VERSION, CONFIG_FILE, WEIGHTS_FILE)
        return super().from_pretrained(directory, local_files_only=True, map_location=str(torch.device(device)), **kwargs)

    @classmethod
    def _from_pretrained(cls, *, model_id: str, map_location: str = "cpu", strict: bool = True,
                         config: dict[str, Any], **_hub_args: Any) -> "VisualTokenizer":
        # The mixin's own version prints to stdout and loads non-strictly; the weights must match.
        model = cls(config)
        weights = Path(model_id) / WEIGHTS_FILE
        try:
            cls._load_as_safetensor(model, str(weights), "cpu", strict)
        except RuntimeError as e:  # a tensor of the wrong shape, or missing/extra: saved by another version
            raise ValueError(f"{weights}: weights do not match the config: {e}") from None
        model = model.to(map_location).eval()
        model._dir = Path(model_id)
        if model.decoder == "flow":
            model.flow_decoder()  # fails here, naming the path, rather than at the first render
        return model
