"""Image-code embeddings factorised over FSQ levels (DESIGN §5).

The vector of image code c is its own row plus one shared row per FSQ level digit of c, on the
input side (embedding) and the output side (LM head). A level that carries colour is then
shared by every code with that colour, so what the model learns about one code transfers to
its neighbours. Both sides are linear in their weights, so folding the shared rows into the
plain matrices (`effective_weight`) is exact: the exported model is a stock transformers model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from arm.text.vocab import VocabLayout
from arm.tokenizer.geometry import level_digits


def code_digits(layout: VocabLayout) -> torch.Tensor:
    """[codebook, n_levels] FSQ digits, first level least significant (vector-quantize-pytorch's order)."""
    return level_digits(torch.arange(layout.codebook_size), layout.levels)


def _shape(w: torch.Tensor) -> torch.Size:
    return getattr(w, "ds_shape", w.shape)  # a ZeRO-3 partitioned parameter keeps its full shape here


class _LevelMixin:
    """Level rows owned by the module itself (not a child): ZeRO-3 gathers a module's own
    parameters before its forward, so rows used inside that forward must be registered on it.

    A code's level rows are computed from the code with integer arithmetic on the ids' own
    device rather than looked up in an index buffer: a buffer made at build time stays on the
    CPU under ZeRO-3 (the engine never moves a zero.Init model), and CUDA ids cannot index it.
    """

    def _init_levels(self, layout: VocabLayout, dim: int, init_std: float, weight: nn.Parameter | None) -> None:
        self.levels = tuple(int(v) for v in layout.levels)
        self.codebook_size = layout.codebook_size
        self.level_weight = weight if weight is not None else nn.Parameter(torch.randn(sum(layout.levels), dim) * init_std)
        self.offset = layout.image_offset

    def level_rows(self, codes: torch.Tensor) -> torch.Tensor:
        """[..., n_levels] rows of `level_weight` that code(s) use: digit of each level + its offset."""
        out, div, base = [], 1, 0
        for lv in self.levels:
            out.append(torch.div(codes, div, rounding_mode="floor") % lv + base)
            div, base = div * lv, base + lv
        return torch.stack(out, -1)

    def per_code(self) -> torch.Tensor:
        """[codebook, d]: the sum of each code's level rows."""
        codes = torch.arange(self.codebook_size, device=self.level_weight.device)
        return self.level_weight[self.level_rows(codes)].sum(1)

    def effective_weight(self) -> torch.Tensor:
        w = self.weight
        return torch.cat([w[: self.offset], w[self.offset :] + self.per_code().to(w.dtype)])


class FactorizedEmbedding(_LevelMixin, nn.Module):
    """Drop-in for the model's input nn.Embedding (keeps `.weight` = the own rows)."""

    def __init__(self, base: nn.Embedding, layout: VocabLayout, init_std: float) -> None:
        super().__init__()
        self.weight = base.weight
        self.padding_idx = base.padding_idx
        self._init_levels(layout, _shape(base.weight)[1], init_std, None)

    @property
    def num_embeddings(self) -> int:
        return _shape(self.weight)[0]

    @property
    def embedding_dim(self) -> int:
        return _shape(self.weight)[1]

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        out = F.embedding(ids, self.weight)
        is_image = ids >= self.offset
        code = (ids - self.offset).clamp(min=0)
        # gather per token rather than materialising every code's row: cheap for a 64k codebook too
        extra = self.level_weight[self.level_rows(code)].sum(-2)
        return out + extra * is_image.unsqueeze(-1).to(out.dtype)


class FactorizedHead(_LevelMixin, nn.Module):
    """Drop-in for the LM head (no bias): logits over the folded matrix.

    Tied: the embedding's own rows and level rows are registered here too (the same Parameter
    objects, as transformers ties lm_head.weight to embed_tokens.weight).
    """

    def __init__(self, weight: nn.Parameter, layout: VocabLayout, init_std: float,
                 tied: FactorizedEmbedding | None = None) -> None:
        super().__init__()
        self.tied = tied is not None
        self.weight = tied.weight if tied is not None else weight
        self._init_levels(layout, _shape(self.weight)[1], init_std, tied.level_weight if tied is not None else None)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        # own rows, then the image columns' shared part added in place: no folded copy of the
        # whole [vocab, d] matrix per forward (1.2 GB at 7b), only [codebook, d]
        logits = F.linear(hidden, self.weight)
        logits[..., self.offset :] += F.linear(hidden, self.per_code().to(hidden.dtype))
        return logits


def install(model, layout: VocabLayout, init_std: float) -> None:
    """Swap a transformers causal LM's embedding and head for the factorised versions, in place."""
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    emb = FactorizedEmbedding(model.get_input_embeddings(), layout, init_std)
    model.set_input_embeddings(emb)
    if tied:
        head = FactorizedHead(emb.weight, layout, init_std, tied=emb)
    else:
        head = FactorizedHead(model.get_output_embeddings().weight, layout, init_std)
    model.set_output_embeddings(head)


def is_factorized(model) -> bool:
    return isinstance(model.get_input_embeddings(), FactorizedEmbedding)


@torch.no_grad()
def fold(model) -> None:
    """Replace the factorised modules by plain nn.Embedding / nn.Linear holding the folded rows (exact)."""
    emb = model.get_input_embeddings()
    head = model.get_output_embeddings()
    if not isinstance(emb, FactorizedEmbedding):
        return
    w_in = emb.effective_weight().detach().clone()
    plain_emb = nn.Embedding(w_in.shape[0], w_in.shape[1], padding_idx=emb.padding_idx, dtype=w_in.dtype, device=w_in.device)
    plain_emb.weight.copy_(w_in)
    model.set_input_embeddings(plain_emb)
    plain_head = nn.Linear(w_in.shape[1], w_in.shape[0], bias=False, dtype=w_in.dtype, device=w_in.device)
    if head.tied:
        plain_head.weight = plain_emb.weight
    else:
        plain_head.weight.copy_(head.effective_weight().detach())
    model.set_output_embeddings(plain_head)


@torch.no_grad()
def folded_state_dict(model, state_dict: dict | None = None) -> dict:
    """The model's tensors with each factorised module's level rows folded in (exact): the state
    dict of a stock transformers model of the same config. No other tensor is copied.

    `state_dict` replaces the model's own tensors: under ZeRO-3 the module holds empty shards, and
    rank 0 passes the engine's consolidated 16-bit state dict instead.
    """
    sd = dict(model.state_dict() if state_dict is None else state_dict)
    folded: dict[str, torch.Tensor] = {}
    for name, mod in model.named_modules():
        if not isinstance(mod, (FactorizedEmbedding, FactorizedHead)):
            continue
        pre = f"{name}." if name else ""
        level = sd.pop(pre + "level_weight", None)
        if isinstance(mod, FactorizedHead) and mod.tied:
            sd[pre + "weight"] = folded["embedding"]  # the same rows as the embedding, folded once
            continue
        w = sd[pre + "weight"]
        if level is None:
            raise KeyError(f"{pre}level_weight missing from the state dict: cannot fold {name}")
        rows = mod.level_rows(torch.arange(mod.codebook_size, device=level.device))
        sd[pre + "weight"] = torch.cat([w[: mod.offset], w[mod.offset :] + level[rows].sum(1).to(w.dtype)])
        if isinstance(mod, FactorizedEmbedding):
            folded["embedding"] = sd[pre + "weight"]
    return sd
