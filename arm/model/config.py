"""Config of the text tokenizer, sequences, AR model, pretraining and sampling."""

from __future__ import annotations

from arm.configbase import Strict


class TextConfig(Strict):
    pass


class ModelConfig(Strict):
    pass


class PretrainConfig(Strict):
    pass


class SamplingConfig(Strict):
    pass
