"""The `7b` code path in CI (DESIGN §7, issue 12): the `7b-mini` preset keeps every switch of `7b`
(qwen2, init_from a local HF checkpoint with vocabulary resize, factorized code embeddings,
ZeRO-3, bf16 with fp32 gradient accumulation, activation checkpointing, a pretrained SigLIP
encoder with window null, a SigLIP teacher and text tower, 384 px images as 24x24 tokens) and
shrinks only widths, depths, steps and data. The "pretrained" pieces are tiny random models
written with save_pretrained (tests/mini_checkpoints.py); nothing comes from a hub.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from arm.curves import read_curve
from tests.conftest import REPO
from tests.mini_checkpoints import make_all, overrides

pytestmark = pytest.mark.xdist_group("deepspeed")  # one process group per worker at a time


def _config(extra: list[str] | None = None):
    from arm.config import load_config

    return load_config(REPO / "params.yaml", preset="7b-mini", overrides=extra or [])


def test_7b_mini_keeps_every_switch_of_7b():
    """By construction (`extends: 7b`), checked here so an edit to either preset cannot drift."""
    from arm.config import load_config

    big, mini = load_config(REPO / "params.yaml", preset="7b"), _config()
    for get in (lambda c: c.model.arch, lambda c: c.model.factorized_image_embeddings,
                lambda c: c.model.attn_implementation, lambda c: c.pretrain.zero_stage,
                lambda c: c.pretrain.precision, lambda c: c.pretrain.activation_checkpointing,
                lambda c: c.tokenizer.encoder.window, lambda c: c.tokenizer.teacher.kind,
                lambda c: c.tokenizer.text_encoder.kind, lambda c: c.tokenizer.image_size,
                lambda c: c.tokenizer.patch_size, lambda c: list(c.tokenizer.levels)):
        assert get(mini) == get(big)
    assert mini.model.init_from and mini.tokenizer.encoder.pretrained and mini.text.tokenizer != "bpe"
    assert tuple(mini.tokenizer.grid) == (24, 24)
    assert mini.model.hidden_size < big.model.hidden_size and mini.pretrain.max_steps < big.pretrain.max_steps


@pytest.mark.slow
def test_7b_mini_lifecycle_on_two_ranks(tmp_path, monkeypatch):
    """Tokenizer training, tokenize and 2-rank bf16 ZeRO-3 pretraining from a resized Qwen2; the
    loss falls, a killed run resumes exactly, the export loads with AutoModelForCausalLM."""
    from transformers import AutoModelForCausalLM

    from arm.data.curate import curate
    from arm.model.io import load_model
    from arm.tokenizer.tokens import tokenize
    from arm.tokenizer.train import train_tokenizer
    from arm.train.pretrain import pretrain_multiprocess

    monkeypatch.chdir(tmp_path)  # every output of the preset lands under tmp_path (relative paths)
    # 4:3 and 3:4 scenes besides the square, so the 7b aspect buckets are trained, encoded, packed
    # and drawn (RL's oracle codec stays on the square world: tests/test_rl_scale.py)
    stand_ins = overrides(make_all(tmp_path / "hub")) + ["world.grids=[[3, 4], [4, 3]]"]
    cfg = _config(stand_ins)
    curate(cfg, progress=False)
    train_tokenizer(cfg, progress=False, evaluate=False)
    spec = json.loads((tmp_path / cfg.tokenizer.output / "config.json").read_text())
    assert spec["encoder_window"] is None and spec["encoder_source"] == cfg.tokenizer.encoder.pretrained
    manifest = tokenize(cfg, progress=False)
    assert tuple(manifest["grid"]) == (24, 24) and manifest["images"] > 0
    # the 7b aspect buckets: the mini world's 4:3 and 3:4 scenes are encoded at 21x27 and 27x21
    from arm.tokenizer.tokens import TokenStore

    assert manifest["grids"] == [[24, 24], [21, 27], [27, 21], [18, 32], [32, 18]]
    grids = {tuple(g) for g in TokenStore(tmp_path / cfg.tokenizer.tokens.output).image_codes()[3].tolist()}
    assert grids == {(24, 24), (21, 27), (27, 21)}

    params = str(REPO / "params.yaml")
    full = pretrain_multiprocess(params, "7b-mini", stand_ins + ["pretrain.checkpoints=ckpt_full",
                                                                 "pretrain.output=model_full",
                                                                 "pretrain.plot=full_curve",
                                                                 "pretrain.metrics=full.json"], nproc=2)
    assert full["world_size"] == 2 and full["steps"] == cfg.pretrain.max_steps
    curve = read_curve(tmp_path / "full_curve")
    losses = [r["loss"] for r in curve]
    assert losses[-1] < losses[0] - 1.0, losses  # from a random Qwen2 with ~16k new rows: falls fast
    assert all(math.isfinite(v) for v in full["val_loss"].values())

    cut = stand_ins + ["pretrain.checkpoints=ckpt_cut", "pretrain.output=model_cut", "pretrain.plot=cut_curve",
                       "pretrain.metrics=cut.json"]
    stop = cfg.pretrain.checkpoint_every  # killed right after a checkpoint
    r = pretrain_multiprocess(params, "7b-mini", cut, nproc=2, stop_after=stop)
    assert r["stopped"] == "stop_after" and not (tmp_path / "model_cut").exists()
    pretrain_multiprocess(params, "7b-mini", cut, nproc=2)
    a, b = read_curve(tmp_path / "full_curve"), read_curve(tmp_path / "cut_curve")
    assert len(a) == len(b) == cfg.pretrain.max_steps
    for ra, rb in zip(a, b):
        for col in ("loss", "lr", "tokens"):
            assert math.isclose(ra[col], rb[col], rel_tol=1e-6), (ra["step"], col)

    # the export is a stock transformers Qwen2 in bf16 with the vocabulary of our layout
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "model_full", local_files_only=True)
    assert model.config.model_type == "qwen2" and model.dtype == torch.bfloat16
    _, tok, layout, man = load_model(tmp_path / "model_full")
    assert model.config.vocab_size == layout.vocab_size == len(tok)
    assert layout.tokens_per_image == 576 and man["model"]["factorized_image_embeddings"] == "folded"
    assert layout.grids == ((24, 24), (21, 27), (27, 21), (18, 32), (32, 18))
    wa = model.state_dict()
    wb = AutoModelForCausalLM.from_pretrained(tmp_path / "model_cut", local_files_only=True).state_dict()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert json.loads((tmp_path / "full.json").read_text())["mfu"] > 0

    # drawn at a requested aspect ratio: 18x32 tokens of 16 px, constrained to that grid
    from arm.sample.pipeline import ArmPipeline

    pipe = ArmPipeline.from_pretrained(tmp_path / "model_full")
    assert pipe.generate("a small red circle", aspect_ratio="16:9", seed=0, cfg_scale=1.0)[0].size == (512, 288)
