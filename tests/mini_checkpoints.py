"""Stand-ins for the hub checkpoints of the `7b` preset, for the `7b-mini` preset (DESIGN §7).

Random-init models of the real classes in tiny shapes, written with `save_pretrained`: a SigLIP
(vision + text tower + a tokenizer) for the tokenizer's encoder, teacher and text encoder, and a
Qwen2 causal LM with its tokenizer for `model.init_from` / `text.tokenizer`. Nothing comes from a
hub. `python -m tests.mini_checkpoints DIR` writes them where the preset looks (.arm-cache/7b-mini).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

WORDS = ("a small large red green blue yellow circle square triangle in the top bottom left right middle "
         "of image make it remove add move what colour shape is there describe photo shirt shoe bag").split()


def _text_tokenizer(vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<|unk|>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|unk|>", "<|pad|>", "<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([" ".join(WORDS)] * 4 + WORDS, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<|unk|>", pad_token="<|pad|>",
                                   eos_token="<|endoftext|>")


def make_siglip(out: Path, image_size: int = 384, patch_size: int = 16, seed: int = 0) -> Path:
    """A SigLIP of the so400m layout (patch 16 at 384 px) with tiny widths, plus a text tokenizer."""
    from transformers import SiglipConfig, SiglipModel

    torch.manual_seed(seed)
    tok = _text_tokenizer(400)
    cfg = SiglipConfig(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=image_size, patch_size=patch_size),
        text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                         vocab_size=len(tok), max_position_embeddings=64, pad_token_id=tok.pad_token_id,
                         bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id),
    )
    SiglipModel(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def make_qwen2(out: Path, seed: int = 0) -> Path:
    """A Qwen2 causal LM (the 7b arch) with its own tokenizer; the run resizes its vocabulary."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    tok = _text_tokenizer(600)
    cfg = Qwen2Config(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                      rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}, tie_word_embeddings=False)
    Qwen2ForCausalLM(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def make_all(root: Path) -> dict[str, Path]:
    root.mkdir(parents=True, exist_ok=True)
    return {"siglip": make_siglip(root / "siglip"), "qwen2": make_qwen2(root / "qwen2")}


def overrides(paths: dict[str, Path]) -> list[str]:
    """Point every hub name of the preset at the stand-ins."""
    s, q = paths["siglip"], paths["qwen2"]
    return [f"tokenizer.encoder.pretrained={s}", f"tokenizer.teacher.name={s}", f"tokenizer.text_encoder.name={s}",
            f"text.tokenizer={q}", f"model.init_from={q}"]


if __name__ == "__main__":
    print(make_all(Path(sys.argv[1] if len(sys.argv) > 1 else ".arm-cache/7b-mini")))
