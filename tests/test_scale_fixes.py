"""Defects of the 7b path that a CPU can show (issue 12), each at unit size:
factorised rows under ZeRO-3's zero.Init, fp32 gradient accumulation under bf16, the chunked
fp32 loss, the export without model copies, the GPU matmul peak for MFU, and a resume with
another world size."""

from __future__ import annotations

import json

import pytest
import torch

from arm.model.config import ModelConfig
from arm.text.vocab import VocabLayout

pytestmark = pytest.mark.xdist_group("deepspeed")

LAYOUT = VocabLayout(n_text=300, codebook_size=60, grid=(3, 3), levels=(4, 5, 3))
SMALL = ModelConfig(arch="qwen2", hidden_size=32, intermediate_size=64, num_layers=2, num_heads=2, num_kv_heads=1,
                    max_position_embeddings=128)


def _ds_config(micro_batch=2, grad_accum=2) -> dict:
    from arm.config import load_config
    from arm.train.pretrain import ds_config
    from tests.conftest import REPO

    cfg = load_config(REPO / "params.yaml", preset="micro", overrides=[
        "pretrain.zero_stage=3", "pretrain.precision=bf16", f"pretrain.micro_batch={micro_batch}",
        f"pretrain.grad_accum={grad_accum}"])
    return ds_config(cfg, world_size=1)


def test_factorized_rows_are_zero3_partitions_in_bf16_and_train():
    """Built under transformers' ZeRO-3 config, the level rows are partitioned bf16 parameters like
    the rest (a plain fp32 CPU tensor made deepspeed.initialize refuse mixed dtypes), the engine
    accumulates gradients in fp32, and a training step runs and moves the level rows."""
    import deepspeed
    from deepspeed.runtime.zero.partition_parameters import is_zero_param
    from transformers.integrations import HfDeepSpeedConfig, unset_hf_deepspeed_config

    from arm.model import factorized
    from arm.model.build import build_model
    from arm.train import dist
    from arm.train.pretrain import param_groups

    denv = dist.env()
    dist.init(denv)
    cfg = _ds_config()
    hf = HfDeepSpeedConfig(cfg)  # noqa: F841 - alive while the model is built
    try:
        model = build_model(SMALL, LAYOUT, seed=0)
        emb = model.get_input_embeddings()
        assert isinstance(emb, factorized.FactorizedEmbedding)
        assert is_zero_param(emb.level_weight) and emb.level_weight.ds_tensor.dtype == torch.bfloat16
        assert list(emb.buffers()) == []  # no index buffer left behind on the CPU under ZeRO-3
        opt = torch.optim.AdamW(param_groups(model, 0.0), lr=1e-2)
        engine, *_ = deepspeed.initialize(model=model, optimizer=opt, config=cfg)
    finally:
        unset_hf_deepspeed_config()
    assert engine.get_data_types() == (torch.bfloat16, torch.float32)
    assert engine.optimizer.gradient_accumulation_dtype == torch.float32
    with deepspeed.zero.GatheredParameters([emb.level_weight]):
        before = emb.level_weight.detach().float().clone()
    ids = torch.tensor([[LAYOUT.bos, LAYOUT.image_offset + 7, LAYOUT.image_offset + 33, LAYOUT.eos]])
    for _ in range(2):  # one optimizer step over two micro-steps
        out = engine(input_ids=ids, labels=ids, use_cache=False)
        engine.backward(out.loss)
        engine.step()
    with deepspeed.zero.GatheredParameters([emb.level_weight]):
        after = emb.level_weight.detach().float()
    assert not torch.equal(before, after)


def test_bf16_without_zero_is_refused():
    from arm.model.config import PretrainConfig

    with pytest.raises(ValueError, match="zero_stage >= 1"):
        PretrainConfig(precision="bf16", zero_stage=0)


def test_chunked_loss_equals_full_fp32_loss_and_its_gradient():
    from arm.train.pretrain import token_losses

    torch.manual_seed(0)
    logits = torch.randn(2, 9, 50, dtype=torch.bfloat16, requires_grad=True)
    batch = {"input_ids": torch.randint(0, 50, (2, 9)), "loss_mask": torch.randint(0, 2, (2, 9)),
             "task_ids": torch.randint(0, 4, (2, 9))}
    sums, counts, loss = token_losses(logits, batch, chunk=5)
    loss.backward()
    g = logits.grad.clone()
    logits.grad = None
    ref = torch.nn.functional.cross_entropy(logits[:, :-1].float().reshape(-1, 50), batch["input_ids"][:, 1:].reshape(-1),
                                            reduction="none").view(2, 8) * batch["loss_mask"][:, 1:]
    ref_loss = ref.sum() / batch["loss_mask"][:, 1:].sum()
    ref_loss.backward()
    assert torch.allclose(loss, ref_loss) and torch.allclose(sums.sum(), ref.sum())
    assert torch.equal(g, logits.grad)


def test_export_folds_without_copying_the_model(tmp_path):
    """The folded state dict shares every tensor but the embedding and head rows with the model,
    and the export works from a consolidated state dict alone (ZeRO-3: the module's own tensors
    are empty shards), here with the module on the meta device."""
    from transformers import AutoModelForCausalLM

    from arm.model import factorized
    from arm.model.build import build_model
    from arm.model.io import export_model, load_model
    from arm.text.tokenizer import train_bpe, wrap

    model = build_model(SMALL, LAYOUT, seed=0)
    with torch.no_grad():
        model.get_input_embeddings().level_weight.normal_(0, 0.5)
    own = model.state_dict()
    folded = factorized.folded_state_dict(model)
    assert not any(k.endswith("level_weight") for k in folded)
    shared = [k for k in folded if k not in ("model.embed_tokens.weight", "lm_head.weight")]
    assert shared and all(folded[k].data_ptr() == own[k].data_ptr() for k in shared)

    base = train_bpe(["a small red circle in the top left", "make the square blue"] * 20, 290)
    tok, layout = wrap(base, LAYOUT.codebook_size, LAYOUT.grid, LAYOUT.levels)
    model = build_model(SMALL.model_copy(update={"max_position_embeddings": 128}), layout, seed=0).eval()
    ids = torch.randint(0, layout.vocab_size, (1, 12))
    with torch.no_grad():
        want = model(input_ids=ids, use_cache=False).logits
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    empty = model.to("meta")  # stands in for the ZeRO-3 module whose shards hold nothing
    export_model(empty, tok, layout, {}, tmp_path / "m", state_dict=sd)
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "m", local_files_only=True).eval()
    with torch.no_grad():
        got = plain(input_ids=ids, use_cache=False).logits
    assert torch.allclose(got, want, atol=1e-5)
    assert load_model(tmp_path / "m")[2] == layout


def test_mfu_peak_is_measured_on_the_gpu_in_the_training_precision(monkeypatch):
    from arm.train import flops

    seen = []
    monkeypatch.setattr(flops, "measured_peak_flops", lambda **kw: seen.append(kw) or 1e15)
    assert flops.peak_flops(torch.device("cuda", 3), "bf16") == 1e15
    assert seen[-1]["dtype"] == torch.bfloat16 and seen[-1]["device"] == "cuda:3"
    flops.peak_flops(torch.device("cpu"), "fp32")
    assert seen[-1]["dtype"] == torch.float32 and "device" not in seen[-1]


def test_resume_with_another_world_size_is_refused(tmp_path):
    from arm.train import checkpoint as ckpt

    for rank in (0, 1):
        ckpt.save_data_position(tmp_path, rank, {"world_size": 2, "rank": rank})
    assert ckpt.load_data_position(tmp_path, 1, 2) == {"world_size": 2, "rank": 1}
    with pytest.raises(ValueError, match="written by 2 rank.*world_size 1"):
        ckpt.load_data_position(tmp_path, 0, 1)
    with pytest.raises(ValueError, match="world_size 3"):
        ckpt.load_data_position(tmp_path, 2, 3)
    assert json.loads((tmp_path / "data_rank0.json").read_text())["world_size"] == 2


def test_init_from_keeps_the_configured_attention_and_is_seeded(tmp_path):
    """`init_from` used to drop model.attn_implementation (the hub default won) and drew the
    resized rows unseeded, so two runs of one config started from different weights."""
    from arm.model.build import build_model
    from tests.mini_checkpoints import make_qwen2

    hub = make_qwen2(tmp_path / "qwen2")
    cfg = SMALL.model_copy(update={"init_from": str(hub), "attn_implementation": "eager"})
    a, b = build_model(cfg, LAYOUT, seed=0), build_model(cfg, LAYOUT, seed=0)
    assert a.config._attn_implementation == "eager"
    assert a.config.vocab_size == LAYOUT.vocab_size
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
