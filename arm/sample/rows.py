"""A batch of token rows decoded together through a transformers causal LM, with its KV cache.

Rows are left-padded; every cache column carries a validity bit (the 2D attention mask) and its
own position id. Speculative decoding appends draft columns and afterwards switches the rejected
ones off instead of cutting them out row by row: a DynamicCache can only be cropped at the end
for the whole batch, so columns that no row still needs are cropped and the rest stay as holes
in the mask. Positions count valid tokens only, so a hole never shifts RoPE.

With `use_cache=False` every forward recomputes the whole sequence: the baseline the KV cache
is measured against, and a reference for its correctness.

With a `StaticCache` (preallocated to a fixed length) every decode forward has the same shapes:
the attention mask is padded to the cache's length and finished rows stay in the batch, masked,
instead of leaving it. Those fixed shapes are what `torch.compile` (and CUDA graphs) need to
replay one compiled decode step; the prefill runs eagerly.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache, StaticCache


class Rows:
    def __init__(self, model, prompts: list[list[int]], pad_id: int, use_cache: bool = True,
                 static: StaticCache | None = None, decode=None, widths: tuple[int, ...] = ()):
        """`static`: a reset StaticCache for len(prompts) rows to use instead of a DynamicCache;
        `decode`: the callable for decode forwards (e.g. the model's compiled call), default the model;
        `widths`: column counts an extension is padded up to (the smallest that fits), so that a
        compiled decode step sees few shapes."""
        if not prompts or any(len(p) == 0 for p in prompts):
            raise ValueError("every row needs a non-empty prompt")
        self.model = model
        self.decode = decode or model
        self.pad_id = pad_id
        self.widths = sorted(widths)
        self.use_cache = use_cache
        self.device = next(model.parameters()).device
        width = max(len(p) for p in prompts)
        self.seq = torch.full((len(prompts), width), pad_id, dtype=torch.long, device=self.device)
        self.mask = torch.zeros((len(prompts), width), dtype=torch.bool, device=self.device)
        for i, p in enumerate(prompts):
            self.seq[i, width - len(p):] = torch.tensor(p, dtype=torch.long)
            self.mask[i, width - len(p):] = True
        self.pos = (self.mask.long().cumsum(1) - 1).clamp(min=0)
        self.next_pos = self.mask.sum(1)
        self.cache = (static or DynamicCache(config=model.config)) if use_cache else None
        self.static_len = static.get_max_length() if static is not None and use_cache else None
        if self.static_len is not None and width > self.static_len:
            raise ValueError(f"prompts of {width} tokens do not fit a static cache of {self.static_len}")
        # static cache: the rows still decoded (finished ones stay in the batch with no valid column)
        self.live = torch.arange(len(prompts), device=self.device)
        self.fed = 0  # columns whose keys/values are in the cache
        self.forwards = 0

    def __len__(self) -> int:
        return len(self.live)

    def prefill(self) -> torch.Tensor:
        """Logits [R, V] after each prompt."""
        return self._forward(self.seq.shape[1], keep=1)[:, -1]

    def extend(self, tokens: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Append columns `tokens` [R, K] (valid [R, K] is a per-row prefix) and return their logits [R, K, V]."""
        tokens, valid = self._all_rows(tokens, self.pad_id), self._all_rows(valid, False)
        asked = tokens.shape[1]
        k = next((w for w in self.widths if w >= asked), asked)
        if k > asked:  # padding columns are invalid: commit and the tail trim drop them again
            tokens = torch.nn.functional.pad(tokens, (0, k - asked), value=self.pad_id)
            valid = torch.nn.functional.pad(valid, (0, k - asked), value=False)
        if self.static_len is not None and self.seq.shape[1] + k > self.static_len:
            raise ValueError(f"{self.seq.shape[1] + k} columns overflow the static cache of {self.static_len}")
        pos = self.next_pos.unsqueeze(1) + torch.arange(k, device=self.device)
        self.seq = torch.cat([self.seq, tokens.to(self.device)], 1)
        self.mask = torch.cat([self.mask, valid.to(self.device)], 1)
        self.pos = torch.cat([self.pos, pos], 1)
        logits = self._forward(k, keep=k)[:, :asked]
        return logits if len(self.live) == logits.shape[0] else logits[self.live]

    def commit(self, n_valid: torch.Tensor) -> None:
        """Keep the first n_valid[r] of the last extension's columns of row r; the rest become holes."""
        k = self.seq.shape[1] - self._committed_width
        cols = torch.arange(k, device=self.device)
        n_valid = self._all_rows(n_valid, 0)
        self.mask[:, -k:] &= cols < n_valid.unsqueeze(1)
        self.next_pos = self.next_pos + n_valid
        self._trim_tail()

    def select(self, rows: torch.Tensor) -> None:
        """Keep only `rows` (finished requests leave the batch and stop costing compute)."""
        rows = rows.to(self.device)
        if self.static_len is not None:  # a static batch keeps its shape: the rows only stop attending
            self.live = self.live[rows]
            return
        self.live = torch.arange(len(rows), device=self.device)
        self.seq, self.mask, self.pos = self.seq[rows], self.mask[rows], self.pos[rows]
        self.next_pos = self.next_pos[rows]
        if self.cache is not None:
            self.cache.batch_select_indices(rows)
        self._trim_tail()

    # ------------------------------------------------------------------ internals

    _committed_width = 0

    def _all_rows(self, x: torch.Tensor, fill) -> torch.Tensor:
        """Per-live-row values -> every row of the batch, `fill` on the finished ones."""
        x = x.to(self.device)
        if len(self.live) == self.seq.shape[0]:
            return x
        full = torch.full((self.seq.shape[0], *x.shape[1:]), fill, dtype=x.dtype, device=self.device)
        full[self.live] = x
        return full

    def _forward(self, k: int, keep: int) -> torch.Tensor:
        if self.cache is not None:
            mask = self.mask
            if self.static_len is not None:  # one mask shape for every step of a static cache
                mask = torch.nn.functional.pad(mask, (0, self.static_len - mask.shape[1]))
            # the prefill's shape changes with the prompts: only decode steps use the compiled call
            forward = self.model if self.fed == 0 else self.decode
            out = forward(
                input_ids=self.seq[:, self.fed:],
                attention_mask=mask,
                position_ids=self.pos[:, self.fed:],
                cache=self.cache,
                use_cache=True,
                logits_to_keep=keep,
            )
            self.fed = self.seq.shape[1]
        else:
            out = self.model(
                input_ids=self.seq, attention_mask=self.mask, position_ids=self.pos, use_cache=False, logits_to_keep=keep
            )
        self._committed_width = self.seq.shape[1] - k
        self.forwards += 1
        return out.logits[:, -k:] if keep >= k else out.logits

    def _trim_tail(self) -> None:
        """Drop trailing columns that no row attends to (cache and bookkeeping alike)."""
        live = self.mask.any(0)
        n = int(self.mask.shape[1] - (live.nonzero().max() + 1)) if bool(live.any()) else 0
        if n == 0:
            return
        self.seq, self.mask, self.pos = self.seq[:, :-n], self.mask[:, :-n], self.pos[:, :-n]
        if self.cache is not None:
            self.cache.crop(-n)  # transformers 5: a negative count removes that many tokens
            self.fed = self.seq.shape[1]
        self._committed_width = min(self._committed_width, self.seq.shape[1])
