"""`arm plan`: per-stage, per-GPU memory measured on fake tensors, checked against --gpu-memory.

The expected ranges are derived here from first principles (bytes per parameter, tensor shapes),
independently of how arm.model.plan measures them.
"""

from __future__ import annotations

import json
import os

import pytest
import torch
from typer.testing import CliRunner

from arm.cli import app
from arm.config import load_config
from tests.conftest import REPO

os.environ.setdefault("HF_HUB_OFFLINE", "1")
PARAMS = str(REPO / "params.yaml")
GB = 1e9


def _plan(*args: str):
    return CliRunner().invoke(app, ["plan", "--params", PARAMS, *args])


def _json(res) -> dict:
    return json.loads(res.stdout)


def _part(stage: dict, prefix: str) -> float:
    (value,) = [v for k, v in stage["parts_gb"].items() if k.startswith(prefix)]
    return value * GB


@pytest.fixture(scope="module")
def plan_7b() -> dict:
    res = _plan("--preset", "7b", "--stages", "pretrain,tokenize", "--json")
    assert res.exit_code == 0, res.output
    return _json(res)


def test_7b_pretrain_fits_with_model_states_activations_and_gathered_layer(plan_7b):
    cfg = load_config(PARAMS, preset="7b")
    r = plan_7b
    assert r["memory_unit"].startswith("GB") and r["gpu_memory_gb"] == 80
    assert [s["stage"] for s in r["stages"]] == ["pretrain", "tokenize"]
    pre = r["stages"][0]
    P, gpus = r["parameters"], cfg.pretrain.nproc
    assert 7.5e9 < P < 7.9e9 and pre["gpus"] == gpus == 8
    # ZeRO-3 partition: bf16 weights 2 + fp32 grad accumulation 4 + fp32 master 4 + AdamW 8 bytes
    states = _part(pre, "model states")
    assert 18 * P / gpus <= states <= 20 * P / gpus
    # the largest module (the 167k-row embedding / LM head) gathered whole in bf16
    assert _part(pre, "gathered") == 2 * r["largest_layer_parameters"]
    V, S, d, L = r["vocab"]["total"], cfg.text.seq_len, cfg.model.hidden_size, cfg.model.num_layers
    acts = _part(pre, "activations")
    # at least: the checkpointed input of every layer (bf16) and the bf16 logits with their gradient
    lower = L * S * d * 2 + 2 * S * V * 2
    # at most: one layer's activations without checkpointing (~34 d + MLP bytes per token, far
    # above the measured one) next to those, the logits twice more and an fp32 loss chunk
    f = cfg.model.intermediate_size
    upper = lower + S * (40 * d + 10 * f) + 2 * S * V * 2 + 3 * cfg.pretrain.loss_chunk * V * 4
    assert lower < acts < upper
    assert pre["per_gpu_bytes"] == pytest.approx(states + _part(pre, "gathered") + acts, rel=1e-6)
    assert pre["fits"] and pre["per_gpu_gb"] < 80


def test_7b_tokenize_fits_with_so400m_encoder_in_bf16(plan_7b):
    cfg = load_config(PARAMS, preset="7b")
    tok = plan_7b["stages"][1]
    assert tok["gpus"] == 1 and tok["fits"]
    # so400m: ~400M encoder parameters (27 x 1152-wide layers), loaded in fp32, plus the heads
    weights = _part(tok, "tokenizer weights")
    assert 4 * 3.9e8 < weights < 4 * 8e8
    b, n, d = cfg.tokenizer.tokens.batch_size, (384 // 16) ** 2, 1152
    acts = _part(tok, "encoder activations")
    # at least the fp32 pixels and one fp32 hidden state of the batch; at most a handful of
    # fp32 [batch, tokens, 4304] MLP tensors (inference keeps one layer alive at a time)
    assert b * 3 * 384 * 384 * 4 + b * n * d * 4 < acts < b * n * 4304 * 4 * 6


def test_stage_over_the_gpu_memory_exits_1_and_names_it():
    res = _plan("--preset", "micro", "--stages", "pretrain", "--gpu-memory", "0.000001")
    assert res.exit_code == 1
    assert "over 1e-06 GB per GPU: pretrain" in res.stderr
    res = _plan("--preset", "micro", "--stages", "pretrain", "--gpu-memory", "0.000001", "--json")
    assert res.exit_code == 1 and _json(res)["stages"][0]["fits"] is False  # stdout stays JSON


def test_unknown_stage_is_a_usage_error():
    res = _plan("--preset", "micro", "--stages", "pretrain,nope")
    assert res.exit_code == 2 and "nope" in res.output


def test_activation_memory_is_linear_in_micro_batch():
    from arm.model.plan import lm_transient_bytes, planned_layout

    cfg = load_config(PARAMS, preset="micro")
    layout = planned_layout(cfg)
    acts = {b: lm_transient_bytes(cfg, layout, rows=b, seq=cfg.text.seq_len, dtype=torch.float32, mode="pretrain")
            for b in (1, 2, 4)}
    # proportional: the loss reads the logits as one flat view, so no row count adds a copy of
    # them (slicing off the last position used to copy [B, seq-1, vocab] whenever B > 1)
    assert acts[4] == pytest.approx(2 * acts[2], rel=0.02)
    assert acts[2] == pytest.approx(2 * acts[1], rel=0.05)


def test_micro_preset_plans_every_stage():
    res = _plan("--preset", "micro", "--json")
    assert res.exit_code == 0, res.output
    stages = _json(res)["stages"]
    assert [s["stage"] for s in stages] == ["pretrain", "train_tokenizer", "tokenize", "rl", "evaluate", "serve"]
    for s in stages:
        assert s["fits"] and 0 < s["per_gpu_bytes"] < 1e9
        assert s["per_gpu_bytes"] == pytest.approx(sum(v * GB for v in s["parts_gb"].values()))
    res = _plan("--preset", "micro", "--stages", "pretrain")
    assert res.exit_code == 0 and "GB (1e9 bytes)" in res.stdout and "pretrain" in res.stdout


def test_unknown_hub_encoder_offline_is_a_clear_error():
    from arm.model.plan import siglip_config

    with pytest.raises(ValueError, match="nobody/vit.*not in the local cache"):
        siglip_config("nobody/vit", "vision")
    assert siglip_config("google/siglip2-so400m-patch16-384", "vision").num_hidden_layers == 27


def _tokenizer_plan(*overrides: str) -> dict:
    sets = [a for o in overrides for a in ("--set", o)]
    res = _plan("--preset", "7b", "--stages", "train_tokenizer", "--json", *sets)
    assert res.exit_code == 0, res.output
    return _json(res)["stages"][0]


def test_7b_tokenizer_training_fits_8_gpus_with_a_chunked_recomputed_bf16_teacher():
    cfg = load_config(PARAMS, preset="7b")
    tr = cfg.tokenizer.train
    assert (tr.precision, tr.nproc, tr.teacher_batch, tr.teacher_checkpointing) == ("bf16", 8, None, True)
    st = _tokenizer_plan()
    b = tr.batch_size // tr.nproc  # 32 images per GPU
    assert st["gpus"] == 8 and st["fits"] and st["per_gpu_gb"] < 80
    assert b == 32 and f"encoder activations (batch {b} per GPU)" in st["parts_gb"]
    # so400m teacher (~400M parameters) held in bf16
    assert 2 * 3.9e8 < _part(st, "teacher weights (bf16)") < 2 * 4.5e8
    n, d, mlp, chunk = (384 // 16) ** 2, 1152, 4304, tr.teacher_chunk
    depth = max(cfg.tokenizer.teacher.perceptual_layers)  # the perceptual pass stops at layer 13
    acts = _part(st, "teacher activations")
    # at least: one chunk's MLP activation (bf16) and every map the losses keep (3 target
    # layers + 2 perceptual ones, bf16, of all 32 images)
    assert acts > chunk * n * mlp * 2 + 5 * b * n * d * 2
    # at most: two bf16 tensors per token and layer (the residual stream and the MLP's) for all
    # 32 images through the perceptual pass's depth: the saved activations of the pass without
    # recomputation are several times that
    assert acts < b * n * depth * (d + mlp) * 2 * 2
    # the whole batch without recomputation keeps every chunk's activations
    plain = _tokenizer_plan("tokenizer.train.teacher_checkpointing=false")
    assert _part(plain, "teacher activations") > 2.5 * acts
    assert st["per_gpu_bytes"] == pytest.approx(sum(v * GB for v in st["parts_gb"].values()))


def test_7b_rl_fits_8_gpus_with_a_sharded_policy_and_reference():
    cfg = load_config(PARAMS, "7b")
    res = _plan("--preset", "7b", "--stages", "rl", "--json")
    assert res.exit_code == 0, res.output
    (rl,) = _json(res)["stages"]
    n = _json(res)["parameters"]
    assert rl["gpus"] == 8 and rl["fits"] and rl["per_gpu_gb"] < 80
    # ZeRO-3 with bf16: 2 (weights) + 4 (fp32 grads) + 12 (fp32 master + Adam) bytes per parameter, an eighth each
    assert _part(rl, "policy states") == pytest.approx(n / 8 * 18, rel=1e-6)
    assert _part(rl, "reference") == pytest.approx(n / 8 * 2, rel=1e-6)
    # the rollouts gather the whole policy in bf16 and keep the KV cache of this GPU's 32 samples x 2 (CFG)
    rows = cfg.rl.prompts_per_step * cfg.rl.group_size // 8 * 2
    m = cfg.model
    kv = rows * 1222 * 2 * m.num_layers * m.num_kv_heads * (m.hidden_size // m.num_heads) * 2
    assert n * 2 + kv < _part(rl, "rollouts") < n * 2 + kv + 10 * GB


def test_7b_rl_with_lora_holds_the_frozen_base_and_small_adapters():
    res = _plan("--preset", "7b", "--stages", "rl", "--set", "rl.lora={r: 16}", "--json")
    (rl,) = _json(res)["stages"]
    n = _json(res)["parameters"]
    assert rl["fits"] and not any(k.startswith(("policy states", "reference")) for k in rl["parts_gb"])
    adapters = _part(rl, "LoRA adapters") / 16  # parameters: fp32 weights, grads and two Adam moments
    m = load_config(PARAMS, "7b").model
    kv_width = m.num_kv_heads * (m.hidden_size // m.num_heads)
    # r x (in + out) per adapted linear: q, o (h -> h), k, v (h -> kv), gate, up, down (h <-> intermediate)
    per_layer = 16 * (2 * (m.hidden_size + m.hidden_size) + 2 * (m.hidden_size + kv_width)
                      + 3 * (m.hidden_size + m.intermediate_size))
    assert adapters == per_layer * m.num_layers
    assert _part(rl, "frozen base") == pytest.approx(n / 8 * 2, rel=1e-6)


def test_7b_every_stage_of_the_lifecycle_fits_80_gb():
    res = _plan("--preset", "7b", "--json")
    assert res.exit_code == 0, res.output
    stages = {s["stage"]: s for s in _json(res)["stages"]}
    assert set(stages) == {"pretrain", "train_tokenizer", "tokenize", "rl", "evaluate", "serve"}
    assert all(s["fits"] and s["per_gpu_gb"] < 80 for s in stages.values()), {k: s["per_gpu_gb"] for k, s in stages.items()}
