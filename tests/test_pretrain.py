"""Pretraining on the DeepSpeed engine: end to end, exact resume, 2 processes on gloo, the CLI."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from arm.curves import read_curve
from arm.text.vocab import VocabLayout
from tests.conftest import REPO

pytestmark = pytest.mark.xdist_group("deepspeed")  # one process group per worker at a time


def _overrides(root, **extra) -> list[str]:
    o = {
        "pretrain.data": "shapes",
        "pretrain.images": "oracle",
        "pretrain.checkpoints": str(root / "ckpt"),
        "pretrain.output": str(root / "model"),
        "pretrain.metrics": str(root / "metrics.json"),
        "pretrain.plot": str(root / "curve"),
    }
    o.update(extra)
    return [f"{k}={v}" for k, v in o.items()]


def _cfg(root, **extra):
    from arm.config import load_config

    return load_config(REPO / "params.yaml", preset="micro", overrides=_overrides(root, **extra))


def test_pretrain_micro_end_to_end(tmp_path):
    from arm.model.io import load_model
    from arm.train.pretrain import pretrain

    cfg = _cfg(tmp_path)
    m = pretrain(cfg, progress=False)
    assert m["steps"] == cfg.pretrain.max_steps and m["world_size"] == 1
    assert m["tokens_seen"] == cfg.pretrain.max_steps * cfg.pretrain.micro_batch * cfg.text.seq_len
    assert m["tokens_per_s"] > 0 and 0 < m["mfu"] < 1
    assert m["padding_waste"] < 0.25
    assert set(m["val_loss"]) >= {"understand", "generate", "edit"}
    # better than uniform over the vocabulary after a few steps
    assert all(v < math.log(m["vocab_size"]) for v in m["val_loss"].values())
    assert json.loads((tmp_path / "metrics.json").read_text())["steps"] == m["steps"]
    curve = read_curve(tmp_path / "curve")
    assert [r["step"] for r in curve] == list(range(1, cfg.pretrain.max_steps + 1))
    assert "val_generate" in curve[-1] and "val_generate" not in curve[0]  # every eval_every steps

    model, tok, layout, manifest = load_model(tmp_path / "model")
    assert manifest["visual_tokenizer"]["kind"] == "oracle" and len(manifest["data"]["version"]) == 64
    assert manifest["model"]["factorized_image_embeddings"] == "folded"
    assert VocabLayout.from_json(manifest["vocab_layout"]) == layout
    assert model.config.vocab_size == layout.vocab_size == len(tok)


def test_exact_resume_matches_uninterrupted_run(tmp_path):
    from arm.train.pretrain import pretrain

    full = _cfg(tmp_path / "a")
    pretrain(full, progress=False)
    cut = _cfg(tmp_path / "b")
    r = pretrain(cut, stop_after=4, progress=False)  # interrupted after step 4 (checkpoint at 3 and 4)
    assert r["stopped"] == "stop_after" and r["step"] == 4
    assert not (tmp_path / "b" / "model").exists()
    pretrain(cut, progress=False)  # resumes from step 4: weights, Adam, schedule, RNG, data position

    a, b = read_curve(tmp_path / "a" / "curve"), read_curve(tmp_path / "b" / "curve")
    assert len(a) == len(b) == full.pretrain.max_steps
    for ra, rb in zip(a, b):
        assert ra.keys() == rb.keys(), ra["step"]
        for col in ra:
            assert math.isclose(ra[col], rb[col], rel_tol=1e-6, abs_tol=1e-7), (ra["step"], col)
    wa = load_file(tmp_path / "a" / "model" / "model.safetensors")
    wb = load_file(tmp_path / "b" / "model" / "model.safetensors")
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.allclose(wa[k], wb[k], atol=1e-6), k


def test_changed_params_start_a_new_run(tmp_path):
    from arm.train.pretrain import pretrain

    pretrain(_cfg(tmp_path, **{"pretrain.max_steps": 2, "pretrain.warmup_steps": 1}), progress=False)
    pretrain(_cfg(tmp_path, **{"pretrain.max_steps": 2, "pretrain.warmup_steps": 1, "pretrain.lr": 0.001}),
             progress=False)
    runs = [p for p in (tmp_path / "ckpt").iterdir() if p.is_dir()]
    assert len(runs) == 2  # a different lr never resumes the other run's checkpoint


def test_time_limit_stops_evaluates_and_exports(tmp_path):
    from arm.train.pretrain import pretrain

    m = pretrain(_cfg(tmp_path, **{"pretrain.time_limit_min": 1e-9}), progress=False)
    assert m["stopped"] == "time_limit" and m["steps"] == 1
    assert set(m["val_loss"]) >= {"understand", "generate", "edit"}  # evaluated before stopping
    assert (tmp_path / "model" / "model.safetensors").exists()


@pytest.mark.slow
@pytest.mark.parametrize("zero_stage", [2, 3])
def test_two_processes_on_gloo_with_zero(tmp_path, zero_stage):
    """torchrun-style env vars, 2 CPU processes, gloo, ZeRO 2 / 3 (zero.Init); rank 0 exports."""
    from arm.model.io import load_model
    from arm.train.pretrain import pretrain_multiprocess

    overrides = _overrides(tmp_path, **{"pretrain.zero_stage": zero_stage, "pretrain.max_steps": 4,
                                        "pretrain.eval_every": 2})
    m = pretrain_multiprocess(str(REPO / "params.yaml"), "micro", overrides, nproc=2)
    assert m["world_size"] == 2 and m["steps"] == 4
    assert m["tokens_seen"] == 4 * 2 * 2 * 96  # steps x processes x micro-batch x seq_len
    assert all(math.isfinite(v) for v in m["val_loss"].values())
    model, _, layout, _ = load_model(tmp_path / "model")
    assert model.config.vocab_size == layout.vocab_size
    run_dir = next(p for p in (tmp_path / "ckpt").iterdir() if p.is_dir())
    tag = (run_dir / "latest").read_text().strip()
    assert {f"rng_rank{r}.pt" for r in (0, 1)} <= {p.name for p in (run_dir / tag).iterdir()}


@pytest.mark.slow
def test_cli_pretrain_runs_the_flow(tmp_path):
    from typer.testing import CliRunner

    from arm.cli import app

    args = ["pretrain", "--params", str(REPO / "params.yaml"), "--preset", "micro"]
    for o in _overrides(tmp_path, **{"pretrain.max_steps": 2, "pretrain.warmup_steps": 1}):
        args += ["--set", o]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert (tmp_path / "model" / "model.safetensors").exists()
    assert json.loads((tmp_path / "metrics.json").read_text())["steps"] == 2


def test_cli_pretrain_bad_config_exits_2(tmp_path):
    from typer.testing import CliRunner

    from arm.cli import app

    res = CliRunner().invoke(app, ["pretrain", "--params", str(REPO / "params.yaml"), "--preset", "micro",
                                   "--set", "pretrain.zero_stage=7"])
    assert res.exit_code == 2
    res = CliRunner().invoke(app, ["pretrain", "--params", str(REPO / "params.yaml"), "--preset", "micro",
                                   "--set", "pretrain.data=shapes"])  # shapes needs oracle images
    assert res.exit_code == 2


@pytest.mark.slow
def test_pretrain_on_curated_store_with_tokenize_stage_codes(tmp_path):
    """The pipeline path: curated store + the tokenize stage's shards (a random-init visual tokenizer)."""
    from arm.config import load_config
    from arm.data.curate import curate
    from arm.model.io import load_model
    from arm.tokenizer.model import VisualTokenizer
    from arm.tokenizer.tokens import tokenize, tokenizer_fingerprint
    from arm.tokenizer.vocab import SPECIALS
    from arm.train.pretrain import pretrain

    o = _overrides(tmp_path, **{
        "pretrain.data": "store", "pretrain.images": "tokenizer",
        "pretrain.tokens": str(tmp_path / "tokens"), "pretrain.visual_tokenizer": str(tmp_path / "vt"),
        "data.store": str(tmp_path / "curated"), "data.metrics": str(tmp_path / "curate.json"),
        "tokenizer.output": str(tmp_path / "vt"), "tokenizer.tokens.output": str(tmp_path / "tokens"),
        "tokenizer.tokens.metrics": str(tmp_path / "tokenize.json"), "pretrain.max_steps": 2,
        "pretrain.warmup_steps": 1,
    })
    cfg = load_config(REPO / "params.yaml", preset="micro", overrides=o)
    curate(cfg, progress=False)
    torch.manual_seed(0)
    vt = VisualTokenizer.build(cfg.tokenizer, caption_vocab=list(SPECIALS), text_dim=384, distill_dim=16)
    vt.save_pretrained(tmp_path / "vt")
    tokenize(cfg, progress=False)

    m = pretrain(cfg, progress=False)
    assert m["steps"] == 2 and m["examples"]["skipped"] == {}  # every image has codes, Fashion-MNIST too
    _, _, layout, manifest = load_model(tmp_path / "model")
    assert (layout.codebook_size, tuple(layout.grid), tuple(layout.levels)) == \
        (vt.codebook_size, tuple(vt.grid), tuple(vt.levels))
    ref = manifest["visual_tokenizer"]
    assert ref["kind"] == "visual_tokenizer" and ref["sha256"] == tokenizer_fingerprint(tmp_path / "vt")
    assert manifest["data"]["images"] == "tokenizer"

    # tokens made by another tokenizer than the one the model dir would name: refused
    torch.manual_seed(1)
    VisualTokenizer.build(cfg.tokenizer, caption_vocab=list(SPECIALS), text_dim=384, distill_dim=16) \
        .save_pretrained(tmp_path / "vt")
    with pytest.raises(ValueError, match="re-run `arm tokenize`"):
        pretrain(cfg, progress=False)
