"""Config of the semantic FSQ visual tokenizer (params.yaml `tokenizer:`)."""

from __future__ import annotations

from arm.configbase import Strict


class TokenizerConfig(Strict):
    pass
