"""A randomly initialised model dir with the preset's architecture, for serving smoke tests and
load tests: same shapes, same code path, same cost per token as a trained model, no training.

Layout: <out>/model (AR model dir, manifest pointing at ../visual_tokenizer) and
<out>/visual_tokenizer. Built from the embedded shapes world's text, so it is offline.
"""

from __future__ import annotations

from pathlib import Path

from arm.config import ArmConfig


def shapes_texts(cfg: ArmConfig, n_scenes: int = 200, seed: int = 0) -> list[str]:
    """Captions, questions and edit instructions of random shapes scenes (the BPE's corpus)."""
    import random

    from arm.data import shapes

    rng = random.Random(seed)
    texts: list[str] = []
    for _ in range(n_scenes):
        scene = shapes.random_scene(rng, cfg.world)
        question, answer = shapes.vqa_pair(rng, scene, cfg.world)
        instruction = shapes.random_edit(rng, scene, cfg.world)[0]
        texts += [shapes.caption(scene, cfg.world.grid), question, answer, instruction]
    return texts


def build_random_model(cfg: ArmConfig, out: str | Path, seed: int = 0) -> Path:
    """Writes a random AR model + visual tokenizer under `out`; returns the AR model dir."""
    import torch

    from arm.model.build import build_model
    from arm.model.io import export_model
    from arm.text.tokenizer import train_bpe, wrap
    from arm.tokenizer.model import VisualTokenizer
    from arm.tokenizer.vocab import CaptionVocab

    out = Path(out)
    tcfg = cfg.tokenizer
    torch.manual_seed(seed)
    texts = shapes_texts(cfg)
    vt = VisualTokenizer.build(tcfg, caption_vocab=CaptionVocab.build(texts, tcfg.caption.vocab_size).tokens, text_dim=384, distill_dim=64)
    vt_dir = vt.save_pretrained(out / "visual_tokenizer")
    base = train_bpe(texts, cfg.text.vocab_size, cfg.text.min_frequency)
    tok, layout = wrap(base, tcfg.codebook_size, tcfg.grid, tuple(tcfg.levels))
    model = build_model(cfg.model, layout, seed=seed)
    manifest = {"visual_tokenizer": {"path": "../visual_tokenizer"}, "random_init": True, "data_version": "none"}
    export_model(model, tok, layout, manifest, out / "model")
    assert vt_dir.is_dir()
    return out / "model"

