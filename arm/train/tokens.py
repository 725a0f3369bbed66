"""Image codes from the tokenize stage (arm.tokenizer.tokens.TokenStore) for pretraining."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from arm.config import ArmConfig
from arm.train.data import Codes, ImageSpec


def token_codes_of(cfg: ArmConfig) -> tuple[Callable[[str, dict], Codes | None], ImageSpec]:
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
    shas, codes = store.all_codes()
    # one int32 array, not a Python int per code (~9x the memory): tuples are made per lookup
    flat = codes.reshape(len(shas), -1).numpy().astype(np.int32)
    where = {s: i for i, s in enumerate(shas)}

    def codes_of(sha, _meta: dict) -> Codes | None:
        i = where.get(sha) if isinstance(sha, str) else None
        return tuple(flat[i].tolist()) if i is not None else None

    reference = {
        "kind": "visual_tokenizer",
        "path": str(tok_dir),
        "sha256": m["tokenizer_fingerprint"],  # of its config.json + model.safetensors
        "tokens": str(cfg.pretrain.tokens),
        "tokens_run": m["run_fingerprint"],
    }
    spec = ImageSpec(int(m["codebook_size"]), tuple(m["grid"]), tuple(int(v) for v in m["levels"]), reference)
    return codes_of, spec
