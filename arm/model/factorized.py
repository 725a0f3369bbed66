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


def code_digits(layout: VocabLayout) -> torch.Tensor:
    """[codebook, n_levels] FSQ digits, first level least significant (vector-quantize-pytorch's order)."""
    codes = torch.arange(layout.codebook_size)
    out = []
    for lv in layout.levels:
        out.append(codes % lv)
        codes = codes // lv
    return torch.stack(out, -1)


class LevelRows(nn.Module):
    """The shared per-level rows; `per_code()` gives the [codebook, d] sum added to image rows."""

    def __init__(self, layout: VocabLayout, dim: int, init_std: float) -> None:
        super().__init__()
        offsets = torch.tensor([0, *layout.levels[:-1]]).cumsum(0)
        self.register_buffer("index", code_digits(layout) + offsets, persistent=False)
        self.weight = nn.Parameter(torch.randn(sum(layout.levels), dim) * init_std)

    def per_code(self) -> torch.Tensor:
        return self.weight[self.index].sum(1)


class FactorizedEmbedding(nn.Module):
    """Drop-in for the model's input nn.Embedding (keeps `.weight` = the own rows)."""

    def __init__(self, base: nn.Embedding, layout: VocabLayout, init_std: float) -> None:
        super().__init__()
        self.weight = base.weight
        self.offset = layout.image_offset
        self.levels = LevelRows(layout, base.weight.shape[1], init_std)
        self.padding_idx = base.padding_idx

    @property
    def num_embeddings(self) -> int:
        return self.weight.shape[0]

    @property
    def embedding_dim(self) -> int:
        return self.weight.shape[1]

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        out = F.embedding(ids, self.weight)
        is_image = ids >= self.offset
        code = (ids - self.offset).clamp(min=0)
        # gather per token rather than materialising every code's row: cheap for a 64k codebook too
        extra = self.levels.weight[self.levels.index[code]].sum(-2)
        return out + extra * is_image.unsqueeze(-1).to(out.dtype)

    def effective_weight(self) -> torch.Tensor:
        w = self.weight
        return torch.cat([w[: self.offset], w[self.offset :] + self.levels.per_code().to(w.dtype)])


class FactorizedHead(nn.Module):
    """Drop-in for the LM head (no bias): logits over the folded matrix.

    Tied to the input embedding when `tied` is given (its own rows and level rows are reused);
    the embedding is held outside the module tree so its parameters are not registered twice.
    """

    def __init__(self, weight: nn.Parameter | None, layout: VocabLayout, init_std: float, tied: FactorizedEmbedding | None = None) -> None:
        super().__init__()
        self._tied = (tied,) if tied is not None else ()
        self.offset = layout.image_offset
        if tied is None:
            self.weight = weight
            self.levels = LevelRows(layout, weight.shape[1], init_std)

    def effective_weight(self) -> torch.Tensor:
        if self._tied:
            return self._tied[0].effective_weight()
        w = self.weight
        return torch.cat([w[: self.offset], w[self.offset :] + self.levels.per_code().to(w.dtype)])

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return F.linear(hidden, self.effective_weight())


def install(model, layout: VocabLayout, init_std: float) -> None:
    """Swap a transformers causal LM's embedding and head for the factorised versions, in place."""
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    emb = FactorizedEmbedding(model.get_input_embeddings(), layout, init_std)
    model.set_input_embeddings(emb)
    if tied:
        head = FactorizedHead(None, layout, init_std, tied=emb)
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
    if head._tied:
        plain_head.weight = plain_emb.weight
    else:
        plain_head.weight.copy_(head.effective_weight().detach())
    model.set_output_embeddings(plain_head)
