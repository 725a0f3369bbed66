"""GRPO post-training: the loss on hand-computed examples, rewards on known inputs, prompts,
the chunked log-probs, the reference model, resume equality and the exported model dir."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from arm.config import load_config
from arm.data import shapes
from arm.data.oracle import parse
from arm.data.shapes import Scene, ShapeObject
from arm.rl import grpo, rewards
from arm.rl.codec import CodecError, LearnedCodec, OracleCodec
from arm.rl.prompts import Prompt, draw_prompt, draw_prompts

REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- builders


def toy_texts(world, n: int = 150) -> list[str]:
    rng = random.Random(0)
    out = []
    for _ in range(n):
        s = shapes.random_scene(rng, world)
        out += [shapes.caption(s, world.grid), shapes.random_edit(rng, s, world)[0], shapes.knowledge_prompt(rng, world)[0]]
    return out


def build_model_dir(out: Path, world, *, visual=None, vt_ref=None, seed: int = 0, model_cfg=None,
                    dtype: torch.dtype | None = None) -> Path:
    """A tiny random AR model dir, exported like arm-base, over the oracle or a learned tokenizer."""
    from arm.model.build import build_model
    from arm.model.config import ModelConfig, TextConfig
    from arm.model.io import export_model
    from arm.text.tokenizer import build_tokenizer
    from arm.train.data import oracle_reference
    from arm.train.perfect import PerfectTokenizer

    if visual is None:
        spec = PerfectTokenizer(world)
        size, grid, levels = spec.codebook_size, spec.grid, spec.levels
        ref = oracle_reference(load_config(REPO / "params.yaml", preset="micro"))
    else:
        size, grid, levels = visual.codebook_size, visual.grid, tuple(visual.levels)
        ref = vt_ref
    tok, layout = build_tokenizer(TextConfig(vocab_size=300), toy_texts(world), size, grid, levels)
    model_cfg = model_cfg or ModelConfig(hidden_size=32, intermediate_size=64, num_layers=2, num_heads=2, num_kv_heads=2)
    model = build_model(model_cfg, layout, seed=seed)
    export_model(model, tok, layout, {"visual_tokenizer": ref, "pretrain": {"note": "test"}}, out, dtype=dtype)
    return out


def tiny_visual_tokenizer():
    from arm.tokenizer.config import TokenizerConfig
    from arm.tokenizer.model import VisualTokenizer

    tc = TokenizerConfig.model_validate({
        "hidden_size": 32, "post_layers": 1, "heads": 2, "decoder_hidden": 32,
        "encoder": {"hidden_size": 32, "layers": 1, "heads": 2}, "caption": {"hidden_size": 16, "heads": 2},
    })
    torch.manual_seed(0)
    return VisualTokenizer.build(tc, caption_vocab=["<pad>", "<bos>", "<eos>", "<unk>", "a"], text_dim=384, distill_dim=16)


@pytest.fixture(scope="module")
def world():
    return load_config(REPO / "params.yaml", preset="micro").world


@pytest.fixture(scope="module")
def oracle_dir(tmp_path_factory, world) -> Path:
    return build_model_dir(tmp_path_factory.mktemp("rl") / "arm-base", world)


def rl_config(base: Path, out: Path, *extra: str):
    return load_config(REPO / "params.yaml", preset="micro", overrides=[
        f"rl.base={base}", f"rl.output={out}/arm-rl", f"rl.checkpoints={out}/ck", f"rl.metrics={out}/rl.json",
        f"rl.plot={out}/curve", "rl.rewards.t2i.alignment=0", *extra,
    ])


def rollout(prompt: Prompt, image: Image.Image, world, codes=None) -> rewards.Rollout:
    codes = torch.zeros(world.grid * world.grid, dtype=torch.long) if codes is None else codes
    return rewards.Rollout(prompt, codes, image, parse(image, world))


def blank(world) -> Image.Image:
    return Image.new("RGB", (world.image_size, world.image_size), tuple(world.background))


# ----------------------------------------------------------------------------- the GRPO loss


def test_group_advantages_by_hand():
    r = torch.tensor([[1.0, 0.0, 0.0, 1.0], [2.0, 2.0, 2.0, 2.0]])
    adv = grpo.group_advantages(r, scale=True, eps=0.0)
    # group 1: mean 0.5, Bessel std sqrt((4 * 0.25) / 3); group 2 has no signal
    s = math.sqrt(1 / 3)
    assert torch.allclose(adv[0], torch.tensor([0.5 / s, -0.5 / s, -0.5 / s, 0.5 / s]))
    assert torch.equal(adv[1], torch.zeros(4))
    assert torch.allclose(grpo.group_advantages(r, scale=False)[0], torch.tensor([0.5, -0.5, -0.5, 0.5]))
    with pytest.raises(ValueError, match="K>=2"):
        grpo.group_advantages(torch.ones(3, 1))


def test_grpo_loss_by_hand():
    """One sample, two tokens, A = 1, eps = 0.2, beta = 0.1.

    token 1: ratio 0.5/0.4 = 1.25 -> clipped to 1.2 (min with A > 0); KL with ref = logp: 0
    token 2: ratio 1;  ref prob 0.5 vs 0.25: d = log 2, KL = 2 - log 2 - 1
    loss = mean(-1.2 + 0, -1 + 0.1 * (1 - log 2)) = -1.08465735...
    """
    logp = torch.log(torch.tensor([[0.5, 0.25]])).requires_grad_(True)
    old = torch.log(torch.tensor([[0.4, 0.25]]))
    ref = torch.log(torch.tensor([[0.5, 0.5]]))
    parts = grpo.grpo_loss(logp, old, torch.tensor([1.0]), clip_eps=0.2, beta=0.1, ref_logp=ref)
    expected = (-1.2 + (-1 + 0.1 * (1 - math.log(2)))) / 2
    assert parts.loss.item() == pytest.approx(expected, abs=1e-6)
    assert parts.kl == pytest.approx((1 - math.log(2)) / 2, abs=1e-6)
    assert parts.clip_fraction == pytest.approx(0.5)
    parts.loss.backward()
    # token 1: clipped branch -> no policy gradient; KL gradient beta*(1 - exp(d)) = 0
    # token 2: -A*ratio/2 + beta*(1 - 2)/2 = -0.5 - 0.05
    assert torch.allclose(logp.grad, torch.tensor([[0.0, -0.55]]), atol=1e-6)


def test_grpo_loss_negative_advantage_and_no_reference():
    logp = torch.log(torch.tensor([[0.2]]))
    old = torch.log(torch.tensor([[0.4]]))  # ratio 0.5 < 0.8: with A < 0 the clipped 0.8 * A is the min
    parts = grpo.grpo_loss(logp, old, torch.tensor([-2.0]), clip_eps=0.2, beta=0.0)
    assert parts.loss.item() == pytest.approx(0.8 * 2.0)
    assert parts.kl == 0.0
    with pytest.raises(ValueError, match="reference"):
        grpo.grpo_loss(logp, old, torch.tensor([1.0]), clip_eps=0.2, beta=0.1)


def test_chunked_image_logprobs_match_full_logits(oracle_dir):
    from arm.model.io import load_model

    model, _, layout, _ = load_model(oracle_dir)
    prompts = [[layout.bos, 5, 6, layout.boi], [layout.bos, 7, layout.boi]]
    g = torch.Generator().manual_seed(0)
    codes = torch.randint(0, layout.codebook_size, (2, layout.tokens_per_image), generator=g)
    ids, mask, starts = grpo.build_rows(prompts, codes, layout)
    assert starts.tolist() == [4, 3] and int(mask[1].sum()) == 3 + layout.tokens_per_image
    temp = 0.7
    got = grpo.image_logprobs(model, layout, ids, mask, starts, temperature=temp, chunk=4)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
    for i in range(2):
        for t in range(layout.tokens_per_image):
            pos = int(starts[i]) + t
            row = logits[i, pos - 1, layout.image_offset : layout.vocab_size] / temp
            want = row.log_softmax(-1)[codes[i, t]]
            assert got[i, t].item() == pytest.approx(want.item(), abs=1e-5)
    # the checkpointed chunks give the same values and gradients as one chunk
    model.zero_grad()
    grpo.image_logprobs(model, layout, ids, mask, starts, chunk=3).sum().backward()
    g1 = model.get_output_embeddings().weight.grad.clone()
    model.zero_grad()
    grpo.image_logprobs(model, layout, ids, mask, starts, chunk=10_000).sum().backward()
    assert torch.allclose(g1, model.get_output_embeddings().weight.grad, atol=1e-6)


def test_guided_logprobs_are_the_samplers_distribution(oracle_dir):
    """With CFG, log-probs come from u + s (c - u) over image codes, as arm.sample.choose draws;
    greedy guided samples from the engine are the argmax of that distribution."""
    from arm.model.io import load_model
    from arm.sample.pipeline import ArmPipeline, uncond_prompt

    model, _, layout, _ = load_model(oracle_dir)
    prompts = [[layout.bos, 5, 6, layout.boi], [layout.bos, 7, layout.boi]]
    codes = ArmPipeline(model, None, layout).sample_image_tokens(prompts, cfg_scale=3.0, temperature=0.0)
    rows = grpo.build_rows(prompts, codes, layout)
    twins = grpo.build_rows([uncond_prompt(p, layout) for p in prompts], codes, layout)
    got = grpo.image_logprobs(model, layout, *rows, uncond=twins, cfg_scale=3.0, chunk=5)
    with torch.no_grad():
        c = model(input_ids=rows[0], attention_mask=rows[1], use_cache=False).logits
        u = model(input_ids=twins[0], attention_mask=twins[1], use_cache=False).logits
    sl = slice(layout.image_offset, layout.vocab_size)
    for i in range(2):
        for t in range(layout.tokens_per_image):
            gc, gu = c[i, int(rows[2][i]) + t - 1, sl], u[i, int(twins[2][i]) + t - 1, sl]
            dist = (gu + 3.0 * (gc - gu)).log_softmax(-1)
            assert got[i, t].item() == pytest.approx(dist[codes[i, t]].item(), abs=1e-5)
            assert int(dist.argmax()) == int(codes[i, t])
    with pytest.raises(ValueError, match="same image codes"):
        bad = grpo.build_rows([uncond_prompt(p, layout) for p in prompts], (codes + 1) % layout.codebook_size, layout)
        grpo.image_logprobs(model, layout, *rows, uncond=bad, cfg_scale=3.0)


# ----------------------------------------------------------------------------- rewards


def _two_object_prompt() -> Prompt:
    target = Scene.of([ShapeObject(0, 0, "circle", "red", "large"), ShapeObject(1, 2, "square", "blue", "small")])
    return Prompt(0, "t2i", shapes.caption(target, 3), target, caption=shapes.caption(target, 3))


def test_adherence_render_is_one_blank_is_zero(world):
    p = _two_object_prompt()
    ctx = rewards.RewardContext(world, OracleCodec(world))
    truth = rollout(p, shapes.render(p.target, world), world)
    wrong = Scene.of([ShapeObject(0, 0, "circle", "green", "large"), ShapeObject(1, 2, "square", "blue", "small")])
    extra = Scene.of([*p.target.objects, ShapeObject(2, 2, "triangle", "red", "small")])
    got = rewards.adherence([truth, rollout(p, blank(world), world), rollout(p, shapes.render(wrong, world), world),
                             rollout(p, shapes.render(extra, world), world)], ctx)
    # recoloured object: 2 of 3 attributes; an extra object is a cell with no counterpart
    assert got == [1.0, 0.0, pytest.approx((2 / 3 + 1) / 2), pytest.approx(2 / 3)]
    assert rewards.exact([truth, rollout(p, shapes.render(wrong, world), world)], ctx) == [1.0, 0.0]


def test_cleanliness_render_is_one_blank_is_zero(world):
    p = _two_object_prompt()
    ctx = rewards.RewardContext(world, OracleCodec(world))
    noisy = np.asarray(shapes.render(p.target, world)).copy()
    noisy[20:28, 20:28] = (0, 0, 0)  # a stray black blot
    got = rewards.cleanliness([rollout(p, shapes.render(p.target, world), world), rollout(p, blank(world), world),
                               rollout(p, Image.fromarray(noisy), world)], ctx)
    assert got[0] == 1.0 and got[1] == 0.0 and 0.0 < got[2] < 1.0


def test_consistency_with_oracle_codec(world):
    codec = OracleCodec(world)
    ctx = rewards.RewardContext(world, codec)
    p = _two_object_prompt()
    good = codec.encode_scenes([p.target])[0]
    bad = good.clone()
    bad[4] = 1  # kind digit only: names no object, so it decodes to an empty cell
    outs = []
    for codes in (good, bad):
        image = codec.decode(codes.unsqueeze(0))[0]
        outs.append(rewards.Rollout(p, codes, image, parse(image, world)))
    assert rewards.consistency(outs, ctx) == [1.0, pytest.approx(8 / 9)]


def test_preservation(world):
    source = Scene.of([ShapeObject(0, 0, "circle", "red", "large"), ShapeObject(2, 2, "square", "blue", "small")])
    target = Scene.of([ShapeObject(0, 0, "circle", "green", "large"), ShapeObject(2, 2, "square", "blue", "small")])
    p = Prompt(0, "edit", "make the circle in the top left green", target, source=source, op="recolor")
    ctx = rewards.RewardContext(world, OracleCodec(world))
    untouched_lost = Scene.of([ShapeObject(0, 0, "circle", "green", "large")])
    got = rewards.preservation([rollout(p, shapes.render(target, world), world), rollout(p, blank(world), world),
                                rollout(p, shapes.render(untouched_lost, world), world)], ctx)
    assert got == [1.0, 0.0, 0.0]
    # the adherence of an edit is against its target: the unedited source is only partly right
    assert rewards.adherence([rollout(p, shapes.render(source, world), world)], ctx) == [pytest.approx((2 / 3 + 1) / 2)]


def test_alignment_is_the_contrastive_match_probability(world):
    vt = tiny_visual_tokenizer()
    codec = LearnedCodec(vt, world)
    ctx = rewards.RewardContext(world, codec)
    p = _two_object_prompt()
    codes = torch.randint(0, vt.codebook_size, (2, 9), generator=torch.Generator().manual_seed(1))
    got = rewards.alignment([rewards.Rollout(p, codes[0]), rewards.Rollout(p, codes[1])], ctx)
    cos = vt.similarity_codes(codes.view(2, 3, 3), [p.caption]).squeeze(1)
    want = torch.sigmoid(cos * vt.logit_scale.exp() + vt.logit_bias)
    assert got == pytest.approx(want.tolist(), rel=1e-4)
    assert all(0.0 <= v <= 1.0 for v in got)
    with pytest.raises(CodecError, match="contrastive"):
        OracleCodec(world).alignment(codes, ["x", "y"])


def test_score_normalises_weights_per_task(world):
    ctx = rewards.RewardContext(world, OracleCodec(world))
    p = _two_object_prompt()
    outs = [rollout(p, shapes.render(p.target, world), world), rollout(p, blank(world), world)]
    totals, comps = rewards.score(outs, {"t2i": {"adherence": 3.0, "cleanliness": 1.0, "consistency": 0.0}}, ctx)
    assert totals == [1.0, 0.0]
    assert comps[0] == {"adherence": 1.0, "cleanliness": 1.0} and "consistency" not in comps[0]


def test_reward_weights_are_checked(world):
    oracle = OracleCodec(world)
    with pytest.raises(rewards.RewardConfigError, match=r"rl.rewards.t2i.nope: unknown reward"):
        rewards.check_weights({"t2i": {"nope": 1.0}}, ["t2i"], oracle)
    with pytest.raises(rewards.RewardConfigError, match="defined for"):
        rewards.check_weights({"t2i": {"preservation": 1.0}}, ["t2i"], oracle)
    with pytest.raises(rewards.RewardConfigError, match="contrastive head"):
        rewards.check_weights({"t2i": {"alignment": 0.5}}, ["t2i"], oracle)
    rewards.check_weights({"t2i": {"alignment": 0.0, "adherence": 1.0}}, ["t2i"], oracle)


# ----------------------------------------------------------------------------- prompts and config


def test_prompts_are_deterministic_and_alternate(world):
    a = draw_prompts(world, ["t2i", "edit"], seed=3, start=10, n=6, knowledge_fraction=0.5)
    assert a == draw_prompts(world, ["t2i", "edit"], seed=3, start=10, n=6, knowledge_fraction=0.5)
    assert [p.task for p in a] == ["t2i", "edit"] * 3
    assert a != draw_prompts(world, ["t2i", "edit"], seed=4, start=10, n=6, knowledge_fraction=0.5)
    for p in a:
        if p.task == "edit":
            assert p.source is not None and p.source != p.target and p.caption == shapes.caption(p.target, world.grid)
    assert draw_prompt(world, ["edit"], 0, 5, 0.0).task == "edit"


def test_rl_config_validation():
    from arm.config import ConfigError

    cfg = load_config(REPO / "params.yaml", preset="micro")
    assert set(cfg.rl.tasks) == {"t2i", "edit"} and cfg.rl.steps <= 5
    only = load_config(REPO / "params.yaml", preset="micro", overrides=["rl.tasks=[edit]"])
    assert only.rl.tasks == ["edit"]
    with pytest.raises(ConfigError, match="rl.tasks"):
        load_config(REPO / "params.yaml", preset="micro", overrides=["rl.tasks=[]"])
    with pytest.raises(ConfigError, match="rl.rewards.edit"):
        load_config(REPO / "params.yaml", preset="micro", overrides=["rl.rewards.edit={adherence: 0}"])
    with pytest.raises(ConfigError, match="group_size"):
        load_config(REPO / "params.yaml", preset="micro", overrides=["rl.group_size=1"])


# ----------------------------------------------------------------------------- the trainer


def test_beta_zero_holds_no_reference(oracle_dir, tmp_path):
    from arm.rl.trainer import GRPOTrainer

    t0 = GRPOTrainer(rl_config(oracle_dir, tmp_path, "rl.beta=0"), progress=False)
    assert t0.reference is None
    t1 = GRPOTrainer(rl_config(oracle_dir, tmp_path, "rl.beta=0.1"), progress=False)
    assert t1.reference is not None
    ref_params = {p.data_ptr() for p in t1.reference.parameters()}
    assert not ref_params & {p.data_ptr() for p in t1.lm.parameters()}
    assert not any(p.requires_grad for p in t1.reference.parameters())


def _history(metrics_dir: Path) -> list[dict]:
    from arm.curves import read_curve

    return read_curve(metrics_dir / "curve")


def test_resume_gives_the_same_curve_and_weights(oracle_dir, tmp_path):
    from safetensors.torch import load_file

    from arm.rl.trainer import train_rl

    extra = ["rl.steps=4", "rl.updates_per_batch=2", "rl.beta=0.05", "rl.lr=0.01", "rl.checkpoint_every=100"]
    straight = tmp_path / "a"
    m = train_rl(rl_config(oracle_dir, straight, *extra), progress=False)
    assert m["steps"] == 4
    split = tmp_path / "b"
    stopped = train_rl(rl_config(oracle_dir, split, *extra), stop_after=2, progress=False)
    assert stopped == {"stopped": "stop_after", "step": 2, "run_dir": stopped["run_dir"]}
    assert not (split / "arm-rl").exists()
    train_rl(rl_config(oracle_dir, split, *extra), progress=False)
    ha, hb = _history(straight), _history(split)
    keys = ["reward", "loss", "kl", "clip_fraction", "ratio", "lr"]
    assert [[r[k] for k in keys] for r in ha] == [[r[k] for k in keys] for r in hb]
    assert any(r["clip_fraction"] > 0 for r in ha) or any(r["ratio"] != 1.0 for r in ha)
    wa = load_file(str(straight / "arm-rl" / "model.safetensors"))
    wb = load_file(str(split / "arm-rl" / "model.safetensors"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    base = load_file(str(oracle_dir / "model.safetensors"))
    assert any(not torch.equal(wa[k], base[k]) for k in wa), "RL did not change the weights"


def test_export_is_a_model_dir_with_an_rl_manifest(oracle_dir, tmp_path):
    from arm.model.io import load_model
    from arm.rl.trainer import train_rl
    from arm.sample.pipeline import ArmPipeline

    cfg = rl_config(oracle_dir, tmp_path, "rl.tasks=[edit]")
    metrics = train_rl(cfg, progress=False)
    out = tmp_path / "arm-rl"
    for name in ("config.json", "model.safetensors", "tokenizer.json", "vocab_layout.json", "manifest.json"):
        assert (out / name).is_file(), name
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["visual_tokenizer"]["kind"] == "oracle"
    assert manifest["pretrain"] == {"note": "test"}
    assert manifest["rl"]["config"]["tasks"] == ["edit"] and manifest["rl"]["steps"] == cfg.rl.steps
    assert manifest["rl"]["base"]["sha256"]["model.safetensors"]
    saved = json.loads((tmp_path / "rl.json").read_text())
    assert saved["tasks"] == ["edit"] and saved["steps"] == cfg.rl.steps == metrics["steps"]
    assert set(saved["rewards"]) >= {"reward", "reward_edit", "edit_adherence", "edit_preservation"}
    rows = _history(tmp_path)
    assert len(rows) == cfg.rl.steps and "reward_edit" in rows[0] and "reward_t2i" not in rows[0]
    model, _, layout, _ = load_model(out)
    pipe = ArmPipeline(model, None, layout)
    codes = pipe.sample_image_tokens([[layout.bos, layout.uncond, layout.boi]], cfg_scale=1.0, seed=0)
    assert codes.shape == (1, layout.tokens_per_image)


def test_learned_tokenizer_run_rewrites_a_relative_reference(tmp_path, world):
    from arm.rl.trainer import train_rl

    vt = tiny_visual_tokenizer()
    vt.save_pretrained(tmp_path / "models" / "tokenizer")
    base = build_model_dir(tmp_path / "models" / "arm-base", world, visual=vt,
                           vt_ref={"kind": "learned", "path": "../tokenizer"})
    out = tmp_path / "elsewhere" / "deeper"
    cfg = load_config(REPO / "params.yaml", preset="micro", overrides=[
        f"rl.base={base}", f"rl.output={out}", f"rl.checkpoints={tmp_path}/ck", f"rl.metrics={tmp_path}/rl.json",
        f"rl.plot={tmp_path}/curve", "rl.steps=1", "rl.tasks=[t2i]",
    ])
    m = train_rl(cfg, progress=False)
    assert m["codec"] == "learned" and "t2i_alignment" in m["rewards"]
    ref = json.loads((out / "manifest.json").read_text())["visual_tokenizer"]
    assert (out / ref["path"]).resolve() == (tmp_path / "models" / "tokenizer").resolve()
