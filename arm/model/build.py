"""Build the AR model (a stock transformers Llama/Qwen2 causal LM) from the preset and layout."""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from transformers import AutoModelForCausalLM, LlamaConfig, PretrainedConfig, Qwen2Config, Qwen3Config

from arm.model import factorized
from arm.model.config import ModelConfig
from arm.text.vocab import VocabLayout


def hf_config(mcfg: ModelConfig, layout: VocabLayout) -> PretrainedConfig:
    common = dict(
        vocab_size=layout.vocab_size,
        hidden_size=mcfg.hidden_size,
        intermediate_size=mcfg.intermediate_size,
        num_hidden_layers=mcfg.num_layers,
        num_attention_heads=mcfg.num_heads,
        num_key_value_heads=mcfg.num_kv_heads,
        max_position_embeddings=mcfg.max_position_embeddings,
        rms_norm_eps=mcfg.rms_norm_eps,
        initializer_range=mcfg.initializer_range,
        tie_word_embeddings=mcfg.tie_word_embeddings,
        rope_parameters={"rope_type": "default", "rope_theta": mcfg.rope_theta},
        pad_token_id=layout.pad,
        bos_token_id=layout.bos,
        eos_token_id=layout.eos,
    )
    if mcfg.arch == "qwen3":  # RMS-normalised queries and keys per head (QK-norm)
        cfg = Qwen3Config(**common, head_dim=mcfg.hidden_size // mcfg.num_heads)
    else:
        cfg = (LlamaConfig if mcfg.arch == "llama" else Qwen2Config)(**common)
    cfg._attn_implementation = mcfg.attn_implementation
    return cfg


def use_factorized(mcfg: ModelConfig, layout: VocabLayout) -> bool:
    # with one level the shared row would only duplicate the code's own row
    return mcfg.factorized_image_embeddings and len(layout.levels) > 1


def _zero3_init():
    """deepspeed.zero.Init while transformers' ZeRO-3 config is active (it built the base model
    partitioned), else nothing. Modules made inside are partitioned too, in the engine's dtype:
    rows added after the base model must be, or DeepSpeed finds a plain fp32 CPU tensor among
    bf16 partitions and refuses the mixed dtypes."""
    from transformers.integrations import deepspeed_config, is_deepspeed_zero3_enabled

    if not is_deepspeed_zero3_enabled():
        return nullcontext()
    import deepspeed

    return deepspeed.zero.Init(config_dict_or_path=deepspeed_config())


def build_model(mcfg: ModelConfig, layout: VocabLayout, seed: int = 0, device: str | torch.device | None = None):
    """A freshly initialised model (or hub weights resized to the layout when `init_from` is set)."""
    torch.manual_seed(seed)  # the rows a resize adds to hub weights are random draws too
    if mcfg.init_from:
        try:
            model = AutoModelForCausalLM.from_pretrained(mcfg.init_from, local_files_only=True,
                                                         attn_implementation=mcfg.attn_implementation)
        except OSError as e:
            raise FileNotFoundError(f"model.init_from {mcfg.init_from!r} is not in the local cache (offline): {e}") from None
        # rows past the hub tokenizer's own are its unused padding or new: they become ours
        model.resize_token_embeddings(layout.vocab_size)
        model.config.pad_token_id, model.config.bos_token_id, model.config.eos_token_id = layout.pad, layout.bos, layout.eos
    else:
        with torch.device(device) if device is not None else nullcontext():
            model = AutoModelForCausalLM.from_config(hf_config(mcfg, layout))
    if use_factorized(mcfg, layout):
        with torch.device(device) if device is not None else nullcontext(), _zero3_init():
            torch.manual_seed(seed + 1)
            factorized.install(model, layout, mcfg.initializer_range)
    return model


def meta_model(mcfg: ModelConfig, layout: VocabLayout):
    """The architecture on the meta device: shapes and counts without memory (used for 7b planning)."""
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(hf_config(mcfg, layout))
        if use_factorized(mcfg, layout):
            factorized.install(model, layout, mcfg.initializer_range)
    return model


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


@dataclass(frozen=True)
class FlopsBreakdown:
    """Training FLOPs per token: 6 x matmul parameters + causal attention (the PaLM convention)."""

    matmul_params: int  # parameters that take part in a matmul per token (layers + LM head)
    attention: float  # 6 * 2 * layers * seq_len * hidden (scores and values, forward + backward)
    per_token: float

    def as_dict(self) -> dict:
        return {"matmul_params": self.matmul_params, "attention_flops": self.attention, "flops_per_token": self.per_token}


def flops_per_token(mcfg: ModelConfig, layout: VocabLayout, seq_len: int) -> FlopsBreakdown:
    """Analytic count from the config (embedding lookups are not FLOPs; the LM head is)."""
    d, f, L = mcfg.hidden_size, mcfg.intermediate_size, mcfg.num_layers
    head_dim = d // mcfg.num_heads
    kv = mcfg.num_kv_heads * head_dim
    per_layer = d * d + 2 * d * kv + d * d + 3 * d * f  # q, k, v, o, gate/up/down
    matmul = L * per_layer + d * layout.vocab_size
    attention = 6.0 * 2 * L * seq_len * d
    return FlopsBreakdown(matmul, attention, 6.0 * matmul + attention)


def largest_layer_params(model) -> int:
    return max(p.numel() for p in model.parameters())


def describe(model) -> str:
    n = count_parameters(model)
    return f"{model.config.model_type} {n / 1e6:.2f}M parameters" + (" (factorised image embeddings)" if factorized.is_factorized(model) else "")


def human(n: float) -> str:
    for unit, scale in (("E", 1e18), ("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:.0f}" if math.isfinite(n) else str(n)
