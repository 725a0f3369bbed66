"""The AR model: packed attention isolation, factorised embeddings and their exact folding,
export/reload identity, the 7b shape on the meta device and `arm plan`."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from arm.model import factorized
from arm.model.build import build_model, count_parameters, flops_per_token, meta_model
from arm.model.config import ModelConfig
from arm.text.sequences import collate, pack
from arm.text.vocab import VocabLayout

LAYOUT = VocabLayout(n_text=300, codebook_size=60, grid=(3, 3), levels=(4, 5, 3))
SMALL = ModelConfig(hidden_size=32, intermediate_size=64, num_layers=2, num_heads=2, num_kv_heads=1,
                    max_position_embeddings=128)


def _model(**kw):
    torch.manual_seed(0)
    m = build_model(SMALL.model_copy(update=kw), LAYOUT, seed=0).eval()
    with torch.no_grad():  # fresh level rows are tiny: make them matter for the checks below
        for mod in m.modules():
            if isinstance(mod, (factorized.FactorizedEmbedding, factorized.FactorizedHead)):
                mod.level_weight.normal_(0, 0.5)
    return m


def _docs(n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        length = int(torch.randint(6, 20, (1,), generator=g))
        ids = torch.randint(0, LAYOUT.vocab_size, (length,), generator=g).tolist()
        out.append((ids, [1] * length, i % 4))
    return out


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_packed_row_logits_equal_separate_documents(attn, tied, arch):
    model = _model(attn_implementation=attn, tie_word_embeddings=tied, arch=arch)
    docs = _docs(5)
    rows = pack(docs, 64, LAYOUT.pad)
    batch = collate(rows)
    with torch.no_grad():
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits
        seen = 0
        for r, row in enumerate(rows):
            real = 64 - row.n_pad
            starts = [i for i in range(real) if row.position_ids[i] == 0] + [real]
            for s, e in zip(starts, starts[1:]):
                alone = model(input_ids=row.input_ids[s:e][None], use_cache=False).logits
                assert torch.allclose(packed[r, s:e], alone[0], atol=1e-5), (r, s, e)
                seen += 1
    assert seen == len(docs)


def test_factorised_rows_share_levels_and_fold_exactly():
    model = _model()
    emb, head = model.get_input_embeddings(), model.get_output_embeddings()
    assert isinstance(emb, factorized.FactorizedEmbedding) and isinstance(head, factorized.FactorizedHead)
    eff = emb.effective_weight()
    own = emb.weight
    # codes 1 and 1 + 4*5 differ only in the last level: their shared parts differ by exactly that level
    off = LAYOUT.image_offset
    digits = factorized.code_digits(LAYOUT)
    same_first_two = [c for c in range(60) if digits[c, 0] == 1 and digits[c, 1] == 2]
    extra = (eff - own)[off:]
    lv = emb.level_weight
    for c in same_first_two:
        assert torch.allclose(extra[c], lv[1] + lv[4 + 2] + lv[9 + digits[c, 2]], atol=1e-6)
    assert torch.equal((eff - own)[:off], torch.zeros_like(own[:off]))  # text rows untouched

    ids = torch.randint(0, LAYOUT.vocab_size, (2, 24))
    plain = copy.deepcopy(model)
    factorized.fold(plain)
    assert type(plain.get_input_embeddings()) is torch.nn.Embedding
    with torch.no_grad():
        a = model(input_ids=ids, use_cache=False).logits
        b = plain(input_ids=ids, use_cache=False).logits
    assert torch.allclose(a, b, atol=1e-5)


def test_level_rows_get_gradient_from_every_code_of_the_level():
    model = _model()
    emb = model.get_input_embeddings()
    ids = torch.tensor([[LAYOUT.bos, LAYOUT.image_offset + 7, LAYOUT.image_offset + 33]])
    model(input_ids=ids, use_cache=False).logits.sum().backward()
    used = set()
    for c in (7, 33):
        d = factorized.code_digits(LAYOUT)[c]
        used |= {int(d[0]), 4 + int(d[1]), 9 + int(d[2])}
    grads = emb.level_weight.grad.abs().sum(1)
    assert {i for i in range(sum(LAYOUT.levels)) if grads[i] > 0} == used  # input side: the codes fed in
    head_grads = model.get_output_embeddings().level_weight.grad.abs().sum(1)
    assert (head_grads > 0).all()  # output side: every code's logit uses its level rows


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_export_reload_identity(tmp_path, arch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from arm.model.io import export_model, load_model
    from arm.text.tokenizer import train_bpe, wrap

    base = train_bpe(["a small red circle in the top left", "make the square blue"] * 20, 290)
    tok, layout = wrap(base, 60, (3, 3), (4, 5, 3))
    model = build_model(SMALL.model_copy(update={"arch": arch}), layout, seed=0).eval()
    if arch == "qwen3":  # QK-norm: a stock Qwen3 checkpoint with per-head query/key RMSNorm
        assert model.config.model_type == "qwen3" and model.config.head_dim == SMALL.hidden_size // SMALL.num_heads
        assert hasattr(model.model.layers[0].self_attn, "q_norm")
    out = export_model(model, tok, layout, {"visual_tokenizer": {"kind": "test"}}, tmp_path / "m")
    assert (out / "model.safetensors").exists() and not list(out.glob("*.bin"))
    reloaded = AutoModelForCausalLM.from_pretrained(str(out), local_files_only=True).eval()
    tok2 = AutoTokenizer.from_pretrained(str(out), local_files_only=True)
    text = "a red circle" + "".join(f"<img_{c}>" for c in (3, 17, 59))
    ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])
    assert ids.tolist() == [tok2(text, add_special_tokens=False)["input_ids"]]
    assert ids[0, -1].item() == layout.image_offset + 59
    with torch.no_grad():
        assert torch.allclose(model(input_ids=ids, use_cache=False).logits,
                              reloaded(input_ids=ids, use_cache=False).logits, atol=1e-5)
    m2, _, layout2, manifest = load_model(out)
    assert layout2 == layout and manifest["vocab_layout"]["vocab_size"] == layout.vocab_size
    assert manifest["visual_tokenizer"] == {"kind": "test"}
    assert json.loads((out / "vocab_layout.json").read_text())["image_offset"] == layout.image_offset


def test_load_model_rejects_non_model_dir(tmp_path):
    from arm.model.io import load_model

    with pytest.raises(FileNotFoundError, match="not a model dir"):
        load_model(tmp_path)


QWEN25_7B_PARAMS = 7_615_616_512  # Qwen2.5-7B as published: vocab 152064, hidden 3584, untied head


def test_7b_preset_on_meta_device_has_qwen25_7b_size():
    from arm.config import load_config
    from tests.conftest import REPO

    cfg = load_config(REPO / "params.yaml", preset="7b")
    assert cfg.model.arch == "qwen2" and cfg.model.hidden_size == 3584
    # a Qwen2.5 text vocabulary plus a 64000-code FSQ codebook (levels 8,8,8,5,5,5)
    layout = VocabLayout(n_text=151665, codebook_size=64000, grid=(16, 16), levels=(8, 8, 8, 5, 5, 5))
    model = meta_model(cfg.model, layout)
    assert next(model.parameters()).device.type == "meta"
    n = count_parameters(model)
    d = cfg.model.hidden_size
    image_rows = (layout.vocab_size - 152064) * d * 2  # input and output rows beyond Qwen's 152064
    level_rows = sum(layout.levels) * d * 2
    assert n == QWEN25_7B_PARAMS + image_rows + level_rows
    assert 7.9e9 < n < 8.2e9
    f = flops_per_token(cfg.model, layout, 4096)
    assert 6 * 7.0e9 < f.per_token < 6 * 8.5e9


def test_flops_count_matches_the_matmul_parameters():
    model = _model()
    f = flops_per_token(SMALL, LAYOUT, 64)
    norms_and_embeddings = sum(p.numel() for n, p in model.named_parameters()
                               if "norm" in n or "embed_tokens" in n or "level_weight" in n)
    # every other parameter is a matmul weight; the head's rows are counted once
    assert f.matmul_params == count_parameters(model) - norms_and_embeddings
    assert f.per_token == 6 * f.matmul_params + 12 * SMALL.num_layers * 64 * SMALL.hidden_size


def test_plan_cli_prints_parameters_flops_and_zero3_memory():
    from typer.testing import CliRunner

    from arm.cli import app
    from tests.conftest import REPO

    res = CliRunner().invoke(app, ["plan", "--params", str(REPO / "params.yaml"), "--preset", "7b", "--json",
                                  "--stages", "pretrain,tokenize"])
    assert res.exit_code == 0, res.output
    r = json.loads(res.output[res.output.index("{"):])
    assert r["arch"] == "qwen2" and r["parameters"] > 7.5e9
    assert r["flops_per_token"] > 6 * 7e9
    no_offload = next(x for x in r["zero3_model_states"] if not x["offload_optimizer"] and x["zero_init"])
    # 18 bytes/param (fp16 params+grads, fp32 Adam) over 8 GPUs, with DeepSpeed's 1.5 buffer factor
    assert 15 < no_offload["gpu_gib"] < 25
    res = CliRunner().invoke(app, ["plan", "--params", str(REPO / "params.yaml"), "--preset", "7b",
                                  "--stages", "pretrain,tokenize"])
    assert res.exit_code == 0 and "ZeRO-3" in res.output and "parameters" in res.output
