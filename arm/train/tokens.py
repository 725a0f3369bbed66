"""Image codes from the tokenize stage (arm.tokenizer.tokens.TokenStore) for pretraining."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from arm.config import ArmConfig
from arm.train.data import ImageCodes, ImageSpec


def token_codes_of(cfg: ArmConfig) -> tuple[Callable[[str, dict], ImageCodes | None], ImageSpec]:
    """`codes_of(image_sha, meta)` over every tokenized image, and the visual tokenizer's spec.

    Refuses tokens made by another tokenizer than the one in `pretrain.visual_tokenizer` (when
    that dir exists): the model dir would otherwise name a tokenizer its codes do not come from.
    """
    from arm.tokenizer.tokens import TokenStore, tokenizer_fingerprint

    store = TokenStore(cfg.pretrain.tokens)
    m = store.manifest
    tok_dir = Path(cfg.pretrain.visual_tokenizer)
    if (tok_dir / "config.json").exists() and (tok_dir / "model.safetensors").exists():
        current = tokenizer_fingerprint(tok_dir)
        if current != m["tokenizer_fingerprint"]:
            raise ValueError(
                f"{cfg.pretrain.tokens} was made by tokenizer {m['tokenizer_fingerprint']}, but {tok_dir} is "
                f"{current}: re-run `arm tokenize`"
            )
    # one int32 array, not a Python int per code (~9x the memory): tuples are made per lookup
    shas, flat, offsets, grids = store.image_codes()
    where = {s: i for i, s in enumerate(shas)}
    default = tuple(m["grid"])

    def codes_of(sha, _meta: dict) -> ImageCodes | None:
        i = where.get(sha) if isinstance(sha, str) else None
        if i is None:
            return None
        grid = (int(grids[i, 0]), int(grids[i, 1]))
        return ImageCodes(tuple(flat[offsets[i]:offsets[i + 1]].tolist()), None if grid == default else grid)

    reference = {
        "kind": "visual_tokenizer",
        "path": str(tok_dir),
        "sha256": m["tokenizer_fingerprint"],  # of its config.json + model.safetensors
        "tokens": str(cfg.pretrain.tokens),
        "tokens_run": m["run_fingerprint"],
    }
    spec = ImageSpec(int(m["codebook_size"]), default, tuple(int(v) for v in m["levels"]), reference,
                     tuple(tuple(g) for g in m.get("grids", [])))
    return codes_of, spec
