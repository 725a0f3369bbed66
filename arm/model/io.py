"""Model dir I/O: export a trained model as a stock transformers model dir, and load one back.

A model dir holds config.json + model.safetensors (save_pretrained), the tokenizer files,
vocab_layout.json, manifest.json (vocabulary layout, visual tokenizer reference + hash,
data version, training summary) and a model card README.md (arm.model.card). Factorised
image embeddings are folded before saving (exact, see arm.model.factorized), so
AutoModelForCausalLM loads it with no custom code.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from arm.io import atomic_path, atomic_write_json
from arm.model import factorized
from arm.model.card import write_model_card
from arm.text.tokenizer import load_tokenizer, save_tokenizer
from arm.text.vocab import VocabLayout

MANIFEST_FILE = "manifest.json"
MANIFEST_FORMAT = "arm-model/1"


def export_model(model, tokenizer, layout: VocabLayout, manifest: dict, out: str | Path, dtype: torch.dtype | None = None,
                 state_dict: dict | None = None) -> Path:
    """Write a complete model dir at `out` atomically (a crash leaves the previous one).

    The stock model is assembled on the meta device around the (folded) tensors themselves, so the
    export holds no copy of the model beyond the embedding and head rows that folding creates and
    a device-to-host or dtype conversion where one is needed: at 7b the old deep copy plus a hub
    reload held three host copies. `state_dict` stands in for the model's tensors (ZeRO-3, rank 0).
    """
    sd = factorized.folded_state_dict(model, state_dict)
    sd = {k: v.detach().to("cpu", dtype=dtype if dtype is not None and v.is_floating_point() else v.dtype)
          for k, v in sd.items()}
    config = copy.deepcopy(model.config)
    config.use_cache = True  # training runs without a cache; generation wants one
    if dtype is not None:
        config.dtype = dtype
    if config.vocab_size != layout.vocab_size:
        raise ValueError(f"model vocab_size {config.vocab_size} != layout {layout.vocab_size}")
    with torch.device("meta"):
        plain = AutoModelForCausalLM.from_config(config)
    plain.load_state_dict(sd, strict=True, assign=True)  # strict: every tensor of the stock model, no extra
    if config.tie_word_embeddings:
        plain.tie_weights()
    manifest = {"format": MANIFEST_FORMAT, "vocab_layout": layout.to_json(), **manifest}
    with atomic_path(out) as tmp:
        tmp.mkdir(parents=True)
        plain.save_pretrained(str(tmp))  # safetensors
        save_tokenizer(tokenizer, layout, tmp)
        atomic_write_json(tmp / MANIFEST_FILE, manifest)
        write_model_card(tmp, model_ref=str(out))
    return Path(out)


def load_model(directory: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None):
    """(model, tokenizer, layout, manifest) of a model dir, with the layout checked against both."""
    directory = Path(directory)
    if not (directory / "config.json").exists():
        raise FileNotFoundError(f"{directory}: not a model dir (no config.json)")
    tok, layout = load_tokenizer(directory)
    model = AutoModelForCausalLM.from_pretrained(str(directory), local_files_only=True, dtype=dtype).to(device)
    if model.config.vocab_size != layout.vocab_size:
        raise ValueError(f"{directory}: model vocab_size {model.config.vocab_size} != layout {layout.vocab_size}")
    manifest_path = directory / MANIFEST_FILE
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    return model.eval(), tok, layout, manifest
