"""The visual tokenizer's API: encode/decode, save/load, code digits, bad input, losses, metrics."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from PIL import Image

from arm.data import shapes
from arm.tokenizer import losses as L
from arm.tokenizer.metrics import code_stats, one_hot_codes, oracle_accuracy, reconstruction_metrics
from arm.tokenizer.model import VisualTokenizer
from arm.tokenizer.vocab import CaptionVocab

VOCAB = CaptionVocab.build(["a small red circle in the center", "a photo of a dress"], 64).tokens


@pytest.fixture
def tok(micro_cfg):
    torch.manual_seed(0)
    return VisualTokenizer.build(micro_cfg.tokenizer, caption_vocab=VOCAB, text_dim=16, distill_dim=8).eval()


def scene_images(cfg, n, seed=0):
    rng = random.Random(seed)
    scenes = [shapes.random_scene(rng, cfg.world) for _ in range(n)]
    return scenes, [shapes.render(s, cfg.world) for s in scenes]


def test_encode_decode_round_trip_shapes_dtypes_ranges(tok, micro_cfg):
    _, images = scene_images(micro_cfg, 5)
    codes = tok.encode(images)
    assert codes.dtype == torch.long and codes.shape == (5, *tok.grid)
    assert tok.grid == (3, 3) and tok.image_size == 48
    assert int(codes.min()) >= 0 and int(codes.max()) < tok.codebook_size == int(np.prod(micro_cfg.tokenizer.levels))
    out = tok.decode(codes)
    assert out.dtype == torch.float32 and out.shape == (5, 3, 48, 48)
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    # flat [B, h*w] codes decode the same as the grid
    assert torch.equal(tok.decode(codes.view(5, -1)), out)
    # PIL list and float tensor inputs give the same codes
    x = torch.stack([torch.from_numpy(np.array(im)).permute(2, 0, 1) for im in images]).float() / 255
    assert torch.equal(tok.encode(x), codes)


def test_codes_to_levels_matches_fsq_and_inverts(tok):
    codes = torch.arange(tok.codebook_size)
    digits = tok.codes_to_levels(codes)
    assert digits.shape == (tok.codebook_size, len(tok.levels))
    for i, lv in enumerate(tok.levels):
        assert int(digits[:, i].max()) == lv - 1 and int(digits[:, i].min()) == 0
    assert torch.equal(digits, tok.fsq.indices_to_level_indices(codes).long())
    assert torch.equal(tok.levels_to_codes(digits), codes)
    grid = codes[:18].view(2, 3, 3)
    assert tok.codes_to_levels(grid).shape == (2, 3, 3, len(tok.levels))
    # every code is a distinct digit tuple: the embedding-by-levels of the AR model is lossless
    assert len({tuple(d) for d in digits.tolist()}) == tok.codebook_size


def test_save_load_identity(tok, micro_cfg, tmp_path, capsys):
    from huggingface_hub import ModelCard

    d = tok.save_pretrained(tmp_path / "tok")
    # PyTorchModelHubMixin's layout: config.json (the init `config`, flat), safetensors, a model card
    assert sorted(p.name for p in d.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dirs left
    card = ModelCard.load(d / "README.md")
    assert card.data.library_name == "arm" and {"visual-tokenizer", "pytorch_model_hub_mixin"} <= set(card.data.tags)
    assert f"codes in [0, {tok.codebook_size})" in card.text and f'from_pretrained("{d}")' in card.text
    assert "More Information Needed" not in card.text
    spec = json.loads((d / "config.json").read_text())
    levels = list(micro_cfg.tokenizer.levels)
    assert spec["levels"] == levels and spec["format"] == "arm-visual-tokenizer" and spec == tok.spec
    back = VisualTokenizer.from_pretrained(d, device="cpu")
    assert capsys.readouterr().out == ""  # nothing on stdout: CLI stages print JSON there
    assert not back.training
    a, b = tok.state_dict(), back.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    _, images = scene_images(micro_cfg, 4, seed=3)
    codes = tok.encode(images)
    assert torch.equal(back.encode(images), codes)
    assert torch.equal(back.decode(codes), tok.decode(codes))
    assert (back.codebook_size, back.grid, back.levels, back.image_size) == (tok.codebook_size, (3, 3), levels, 48)
    # overwriting an existing dir is atomic too
    tok.save_pretrained(d)
    assert VisualTokenizer.from_pretrained(d).levels == levels


def test_tokenizer_saved_before_the_mixin_still_loads(tok, micro_cfg, tmp_path):
    """models/tokenizer dirs written by the hand-written save (flat config.json + safetensors with
    every state-dict key, no card) load unchanged: DVC caches hold such outputs."""
    from safetensors.torch import save_file

    d = tmp_path / "old"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(tok.spec, indent=2, sort_keys=True) + "\n")
    save_file({k: v.contiguous() for k, v in tok.state_dict().items()}, str(d / "model.safetensors"),
              metadata={"format": "arm-visual-tokenizer"})
    back = VisualTokenizer.from_pretrained(d)
    _, images = scene_images(micro_cfg, 3, seed=5)
    assert torch.equal(back.encode(images), tok.encode(images))


def test_from_pretrained_errors(tmp_path, tok):
    missing = tmp_path / "missing"
    with pytest.raises(FileNotFoundError, match=f"{missing}: not a saved tokenizer"):
        VisualTokenizer.from_pretrained(missing)
    d = tok.save_pretrained(tmp_path / "other")
    (d / "config.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(ValueError, match="other/config.json: not an arm-visual-tokenizer config"):
        VisualTokenizer.from_pretrained(d)
    # strict weights: a tensor missing from the file is an error naming the file, not a random init
    from safetensors.torch import load_file, save_file

    d = tok.save_pretrained(tmp_path / "partial")
    state = load_file(str(d / "model.safetensors"))
    state.pop("logit_bias")
    save_file(state, str(d / "model.safetensors"))
    with pytest.raises(ValueError, match="partial/model.safetensors: weights do not match"):
        VisualTokenizer.from_pretrained(d)
    d = tok.save_pretrained(tmp_path / "t")
    (d / "config.json").write_text("{nope")
    with pytest.raises(ValueError, match="invalid JSON"):
        VisualTokenizer.from_pretrained(d)
    # weights of another shape (a tokenizer saved by an older layout of a head) name the file
    d = tok.save_pretrained(tmp_path / "t2")
    spec = json.loads((d / "config.json").read_text())
    spec["hidden_size"] = int(spec["hidden_size"]) * 2
    (d / "config.json").write_text(json.dumps(spec))
    with pytest.raises(ValueError, match="model.safetensors: weights do not match"):
        VisualTokenizer.from_pretrained(d)


def test_bad_input(tok, micro_cfg):
    _, images = scene_images(micro_cfg, 2)
    x = torch.stack([torch.from_numpy(np.array(im)).permute(2, 0, 1) for im in images]).float() / 255
    with pytest.raises(ValueError, match="channels"):
        tok.encode(x[:, :2])
    with pytest.raises(ValueError, match="empty batch"):
        tok.encode(x[:0])
    with pytest.raises(ValueError, match="empty batch"):
        tok.encode([])
    bad = x.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        tok.encode(bad)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        tok.encode(x * 255)
    with pytest.raises(ValueError, match="batch"):
        tok.encode(x[0])
    with pytest.raises(TypeError, match="PIL"):
        tok.encode(["not an image"])
    # wrong size -> resized to the configured size; grey and RGBA are converted
    big = [im.resize((96, 96), Image.NEAREST) for im in images]
    assert tok.encode(big).shape == (2, 3, 3)
    assert tok.encode(torch.nn.functional.interpolate(x, size=(64, 64))).shape == (2, 3, 3)
    grey = x.mean(1, keepdim=True)
    assert torch.equal(tok.encode(grey), tok.encode(grey.expand(-1, 3, -1, -1)))
    rgba = torch.cat([x, torch.ones_like(x[:, :1])], 1)
    assert torch.equal(tok.encode(rgba), tok.encode(x))
    assert tok.encode([im.convert("L") for im in images]).shape == (2, 3, 3)
    assert torch.equal(tok.encode((x * 255).round().to(torch.uint8)), tok.encode(x))
    # decode: codes out of range, float codes, empty
    with pytest.raises(ValueError, match="values must lie"):
        tok.decode(torch.full((1, 3, 3), tok.codebook_size))
    with pytest.raises(ValueError, match="integer"):
        tok.decode(torch.zeros(1, 3, 3))
    with pytest.raises(ValueError, match="empty"):
        tok.decode(torch.zeros(0, 3, 3, dtype=torch.long))


def test_config_rejects_misaligned_patch_and_bad_levels(micro_cfg):
    from arm.tokenizer.config import TokenizerConfig

    with pytest.raises(ValueError, match="multiple of patch_size"):
        TokenizerConfig(image_size=48, patch_size=10)
    with pytest.raises(ValueError, match=">= 3"):
        TokenizerConfig(levels=[2, 5])
    with pytest.raises(ValueError, match="extra"):
        TokenizerConfig.model_validate({"levelz": [5]})


def test_pretrained_frozen_encoder_path(micro_cfg, tmp_path):
    """The 7b preset's path (frozen pretrained SigLIP by name), with a tiny random SigLIP on disk."""
    from transformers import SiglipVisionConfig, SiglipVisionModel

    torch.manual_seed(1)
    enc = SiglipVisionModel(SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                               num_attention_heads=2, image_size=48, patch_size=16))
    enc.save_pretrained(tmp_path / "siglip")
    cfg = micro_cfg.tokenizer.model_copy(update={
        "encoder": micro_cfg.tokenizer.encoder.model_copy(update={"pretrained": str(tmp_path / "siglip"), "window": None})})
    tok = VisualTokenizer.build(cfg, caption_vocab=VOCAB, text_dim=16, distill_dim=8)
    assert tok.encoder_frozen and not any(p.requires_grad for p in tok.encoder.parameters())
    assert any(p.requires_grad for p in tok.proj_in.parameters())
    ref = enc.state_dict()
    got = tok.encoder.state_dict()
    assert all(torch.equal(got[k], ref[k]) for k in got)
    tok.train()
    assert not tok.encoder.training  # a frozen encoder stays in eval mode
    # a mismatched pretrained resolution is a clear error
    bad = micro_cfg.tokenizer.model_copy(update={"image_size": 64, "patch_size": 16, "encoder": cfg.encoder})
    with pytest.raises(ValueError, match="encoder expects 48px"):
        VisualTokenizer.build(bad, caption_vocab=VOCAB, text_dim=16, distill_dim=8)
    # saved and loaded without the source dir: the weights travel in model.safetensors
    d = tok.save_pretrained(tmp_path / "tok")
    (tmp_path / "siglip" / "model.safetensors").unlink()
    back = VisualTokenizer.from_pretrained(d)
    x = torch.rand(2, 3, 48, 48)
    assert torch.equal(back.encode(x), tok.eval().encode(x))


def test_window_one_codes_depend_on_their_own_patch_only(micro_cfg):
    """encoder.window=1: a cell's code is the same wherever the cell sits and whatever surrounds it."""
    cfg = micro_cfg.tokenizer.model_copy(update={"encoder": micro_cfg.tokenizer.encoder.model_copy(update={"window": 1})})
    torch.manual_seed(0)
    tok = VisualTokenizer.build(cfg, caption_vocab=VOCAB, text_dim=16, distill_dim=8).eval()
    x = torch.rand(1, 3, 48, 48)
    moved = torch.rand(1, 3, 48, 48)  # other neighbours, and the centre patch moved to the top left
    moved[:, :, :16, :16] = x[:, :, 16:32, 16:32]
    assert torch.equal(tok.pre_quant(moved)[0, 0], tok.pre_quant(x)[0, 4])
    glob = micro_cfg.tokenizer.model_copy(update={"encoder": micro_cfg.tokenizer.encoder.model_copy(update={"window": None})})
    tok_g = VisualTokenizer.build(glob, caption_vocab=VOCAB, text_dim=16, distill_dim=8).eval()
    assert not torch.allclose(tok_g.pre_quant(moved)[0, 0], tok_g.pre_quant(x)[0, 4])  # global attention mixes


def test_siglip_teacher_from_local_dir(tmp_path):
    from transformers import SiglipVisionConfig, SiglipVisionModel

    from arm.tokenizer.config import TeacherConfig
    from arm.tokenizer.teachers import build_teacher

    SiglipVisionModel(SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=2, image_size=32, patch_size=8)).save_pretrained(tmp_path / "s")
    t = build_teacher(TeacherConfig(kind="siglip", name=str(tmp_path / "s"), distill_layer=-1, perceptual_layers=[1]), (3, 3))
    f = t.features(torch.rand(2, 3, 48, 48))
    assert f[-1].shape == (2, 32, 4, 4) and f[1].shape == (2, 32, 4, 4)
    assert L.pool_to_grid(f[-1], (3, 3)).shape == (2, 9, 32)
    assert not any(p.requires_grad for p in t.parameters())


def test_efficientnet_teacher_classifies_a_cat():
    """The ImageNet weights load into the right network: scikit-image's cat is a cat."""
    skdata = pytest.importorskip("skimage.data")
    from arm.tokenizer.efficientnet_lite import load_efficientnet_lite0

    net = load_efficientnet_lite0()
    img = Image.fromarray(skdata.chelsea()).resize((224, 224), Image.BICUBIC)
    x = torch.from_numpy(np.array(img)).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        top = int(net(x).argmax())
    assert top in (281, 282, 283, 284, 285, 286, 287)  # ImageNet's domestic and wild cats


def test_contrastive_loss_counts_identical_texts_as_positives():
    emb = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    scale, bias = torch.tensor(np.log(10.0)), torch.tensor(-10.0)
    same = L.sigmoid_contrastive(emb, emb, torch.tensor([0, 0, 1, 2]), scale, bias)
    distinct = L.sigmoid_contrastive(emb, emb, torch.tensor([0, 3, 1, 2]), scale, bias)
    assert not torch.isclose(same, distinct)
    aligned = L.sigmoid_contrastive(emb, emb, torch.arange(4), torch.tensor(np.log(30.0)), torch.tensor(-5.0))
    shuffled = L.sigmoid_contrastive(emb, emb.flip(0), torch.arange(4), torch.tensor(np.log(30.0)), torch.tensor(-5.0))
    assert aligned < shuffled


def test_vocab_round_trip():
    v = CaptionVocab.build(["a small red circle in the top left, and a blue square"], 100)
    ids = v.encode("a blue circle in the top left", 40)
    assert ids[0] == 1 and ids[-1] == 2
    assert v.decode(ids) == "a blue circle in the top left"
    assert v.encode("a purple hexagon", 40)[2:4] == [3, 3]  # unknown words -> <unk>
    assert len(v.encode("word " * 100, 10)) == 10


def test_metric_helpers(micro_cfg):
    scenes, images = scene_images(micro_cfg, 6)
    u8 = torch.stack([torch.from_numpy(np.array(im)).permute(2, 0, 1) for im in images])
    perfect = reconstruction_metrics(u8, u8)
    assert perfect["psnr"] == 100.0 and perfect["ssim"] == pytest.approx(1.0, abs=1e-4)
    darker = (u8.int() - 20).clamp(0, 255).to(torch.uint8)  # 20 levels off almost everywhere: ~22 dB
    assert reconstruction_metrics(darker, u8)["psnr"] == pytest.approx(20 * np.log10(255 / 20), abs=0.5)
    assert oracle_accuracy(u8, [s.to_json() for s in scenes], micro_cfg.world)["oracle_scene_accuracy"] == 1.0
    blank = torch.full_like(u8, 255)
    assert oracle_accuracy(blank, [s.to_json() for s in scenes], micro_cfg.world)["oracle_scene_accuracy"] == 0.0
    s = code_stats(torch.tensor([0, 0, 1, 2]), 8)
    assert s["code_usage"] == 3 / 8 and s["codes_used"] == 3
    assert s["code_perplexity"] == pytest.approx(np.exp(-(0.5 * np.log(0.5) + 2 * 0.25 * np.log(0.25))))
    hot = one_hot_codes(torch.tensor([[2, 0], [1, 1]]), 3)  # position-major: [pos0 codes 0..2, pos1 codes 0..2]
    assert hot.tolist() == [[0, 0, 1, 1, 0, 0], [0, 1, 0, 0, 1, 0]]


def test_reconstruction_log_mse_is_per_patch():
    target = torch.zeros(1, 3, 4, 4)
    recon = target.clone()
    recon[:, :, :2, :2] = 0.1  # one of four 2x2 patches is off by 0.1: its MSE is 0.01, the others' 0
    parts = L.reconstruction(recon, target, patch=2, eps=1e-4)
    assert parts["l2"].item() == pytest.approx(0.01 / 4)
    assert parts["l1"].item() == pytest.approx(0.1 / 4)
    expected = (np.log(0.01 + 1e-4) + 3 * np.log(1e-4)) / 4
    assert parts["log_mse"].item() == pytest.approx(expected, rel=1e-5)
    # per image it would be log(0.0025 + eps): the per-patch mean punishes the bad patch harder
    assert parts["log_mse"].item() < np.log(0.0025 + 1e-4)


@pytest.mark.parametrize("levels", [[5, 3, 3], [3, 3, 3, 3], [8, 5, 5], [4, 4, 3]])
def test_lattice_codes_match_fsq_indices(micro_cfg, levels):
    tok = VisualTokenizer.build(micro_cfg.tokenizer.model_copy(update={"levels": levels}),
                                caption_vocab=VOCAB, text_dim=16, distill_dim=8)
    codes = torch.arange(tok.codebook_size)
    q = tok.fsq.indices_to_codes(codes)
    assert torch.equal(tok.lattice_codes(q), codes)
    assert torch.equal(tok.lattice_codes(q + 0.1 * (torch.rand_like(q) - 0.5) / max(levels)), codes)  # rounds


def test_each_code_can_render_its_own_template(micro_cfg):
    """The per-code decoder embedding: changing one code's row changes only the patches with that code."""
    torch.manual_seed(0)
    tok = VisualTokenizer.build(micro_cfg.tokenizer, caption_vocab=VOCAB, text_dim=16, distill_dim=8).eval()
    codes = torch.tensor([[[0, 1, 2], [3, 4, 5], [0, 1, 2]]])
    before = tok.decode(codes)
    with torch.no_grad():
        tok.code_embed.weight[1] += 5.0
    after = tok.decode(codes)
    changed = (after - before).abs().amax(dim=1)[0].unfold(0, 16, 16).unfold(1, 16, 16).amax((-1, -2)) > 0
    assert changed.tolist() == [[False, True, False], [False, False, False], [False, True, False]]


def test_cell_state_codes_counts_states_that_share_a_code(micro_cfg):
    from arm.tokenizer.metrics import cell_state_codes

    scenes, _ = scene_images(micro_cfg, 40)
    names = sorted({"empty"} | {o.describe() for s in scenes for o in s.objects})
    code_of = {name: i for i, name in enumerate(names)}

    def codes_for(mapping):
        return torch.tensor([[mapping["empty" if s.at(r, c) is None else s.at(r, c).describe()]
                              for r in range(3) for c in range(3)] for s in scenes])

    jsons = [s.to_json() for s in scenes]
    own = cell_state_codes(codes_for(code_of), jsons, micro_cfg.world)
    assert own == {"cell_states": len(names), "cell_states_with_own_code": len(names)}
    a, b = [n for n in names if n != "empty"][:2]
    merged = cell_state_codes(codes_for({**code_of, b: code_of[a]}), jsons, micro_cfg.world)
    assert merged == {"cell_states": len(names), "cell_states_with_own_code": len(names) - 2}


def test_cell_states_give_every_content_its_own_class(micro_cfg):
    w = micro_cfg.world
    n = shapes.cell_state_count(w)
    assert n == 1 + len(w.sizes) * len(w.colors) * len(w.kinds)
    every = [shapes.ShapeObject(0, 0, k, c, s) for k in w.kinds for c in w.colors for s in w.sizes]
    classes = [shapes.cell_states(shapes.Scene.of([o]), w)[0] for o in every]
    assert sorted(classes) == list(range(1, n))  # one class each, 0 is left for empty
    scene = shapes.Scene.of([shapes.ShapeObject(2, 1, w.kinds[0], w.colors[0], w.sizes[0])])
    assert shapes.cell_states(scene, w) == [0] * 7 + [1, 0]  # row-major: (2, 1) is cell 7


def test_scene_loss_is_the_mean_token_cross_entropy():
    logits = torch.tensor([[[4.0, 0.0], [0.0, 4.0]], [[1.0, 1.0], [2.0, 0.0]]])
    states = torch.tensor([[0, 1], [1, 1]])
    confident = -torch.log_softmax(torch.tensor([4.0, 0.0]), 0)[0]
    expected = (2 * confident + torch.log(torch.tensor(2.0)) + -torch.log_softmax(torch.tensor([2.0, 0.0]), 0)[1]) / 4
    assert float(L.scene(logits, states)) == pytest.approx(float(expected))


def _saved_bytes(fn) -> int:
    """Bytes autograd keeps for the backward while `fn` runs (what activation memory is made of)."""
    total = [0]

    def pack(t):
        total[0] += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return total[0]


@pytest.fixture
def siglip_teacher(tmp_path):
    from transformers import SiglipVisionConfig, SiglipVisionModel

    from arm.tokenizer.config import TeacherConfig
    from arm.tokenizer.teachers import build_teacher

    torch.manual_seed(0)
    SiglipVisionModel(SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                                         num_attention_heads=2, image_size=32, patch_size=8)).save_pretrained(tmp_path / "s")
    return build_teacher(TeacherConfig(kind="siglip", name=str(tmp_path / "s"), distill_layer=-1,
                                       perceptual_layers=[1, 2]), (3, 3))


def test_siglip_teacher_layers_are_the_towers_hidden_states(siglip_teacher):
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        ref = siglip_teacher.net(pixel_values=x * 2 - 1, output_hidden_states=True)
        f = siglip_teacher.features(x, [0, 2, -1])
    for k, h in ((0, ref.hidden_states[0]), (2, ref.hidden_states[2]), (-1, ref.last_hidden_state)):
        assert torch.allclose(f[k].flatten(2).transpose(1, 2), h, atol=1e-6), k


def test_teacher_chunks_with_checkpointing_match_and_save_one_chunk(siglip_teacher):
    """The perceptual pass in chunks of 2 with recomputation gives the same features and input
    gradient as the whole batch at once, and keeps only the chunks' inputs for the backward
    (the 4-layer tower's activations of all 8 images otherwise)."""
    x = torch.rand(8, 3, 32, 32)
    target = {k: v.detach() for k, v in siglip_teacher.features(torch.rand(8, 3, 32, 32), [1, 2]).items()}

    def grad_of(**kw):
        r = x.clone().requires_grad_(True)
        out = {}
        saved = _saved_bytes(lambda: out.update(loss=L.perceptual(siglip_teacher.features(r, [1, 2], **kw), target)))
        out["loss"].backward()
        return out["loss"], r.grad, saved

    loss_a, grad_a, saved_a = grad_of()
    loss_b, grad_b, saved_b = grad_of(chunk=2, checkpoint=True)
    assert torch.allclose(loss_a, loss_b, atol=1e-6) and torch.allclose(grad_a, grad_b, atol=1e-6)
    assert float(grad_a.abs().sum()) > 0
    # the whole-batch pass saves far more than the chunked, recomputed one, which saves only
    # its inputs and what the loss itself keeps (the features of the two layers)
    feature_bytes = 2 * 8 * 32 * 16 * 4
    assert saved_b <= x.numel() * 4 + 4 * feature_bytes < saved_a / 2


def test_teacher_in_bf16_under_autocast_tracks_fp32(siglip_teacher):
    import copy

    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        ref = siglip_teacher.features(x, [2])[2]
        half = copy.deepcopy(siglip_teacher).to(torch.bfloat16)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = half.features(x, [2], chunk=3)[2]
    assert got.dtype == torch.bfloat16 and got.shape == ref.shape
    cos = torch.nn.functional.cosine_similarity(got.float().flatten(1), ref.flatten(1))
    assert float(cos.min()) > 0.99


def test_zero_shot_refuses_prompts_that_are_training_captions():
    """Fashion-MNIST's training captions are "a photo of <phrase>": a template that renders them
    would measure recall of the training text, not zero-shot transfer."""
    from arm.tokenizer.config import TokenizerConfig
    from arm.tokenizer.metrics import FashionSet, fashion_zeroshot

    class Texts:  # a stand-in text tower: only the prompts are under test
        def embed_texts(self, texts):
            return torch.nn.functional.normalize(torch.randn(len(texts), 4), dim=-1)

    test = FashionSet(torch.randn(5, 4), torch.randn(5, 8), torch.zeros(5, 9, dtype=torch.long), np.zeros(5, dtype=np.int64))
    with pytest.raises(ValueError, match="training captions"):
        fashion_zeroshot(Texts(), test, ["a photo of {}."])
    out = fashion_zeroshot(Texts(), test, list(TokenizerConfig().eval.prompts))  # the defaults are not captions
    assert 0.0 <= out["fashion_zeroshot_accuracy"] <= 1.0
