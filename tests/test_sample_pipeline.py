"""ArmPipeline and the `arm generate/describe/edit` commands over a random model dir.

The model dir is built the way pretraining exports one: a transformers causal LM saved with
save_pretrained (safetensors), the text tokenizer and vocab_layout.json, and a manifest.json
naming a visual tokenizer dir (a randomly initialised VisualTokenizer, saved with its own
save_pretrained). No trained artifact is needed.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import LlamaConfig, LlamaForCausalLM
from typer.testing import CliRunner

from arm.cli import app
from arm.sample.pipeline import ArmPipeline, Task, uncond_prompt
from arm.text.formats import format_prompt

runner = CliRunner()
TEXTS = ["a red circle", "a blue square on the left", "make the circle green", "what colour is the square?"] * 10


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from arm.config import load_config
    from arm.text.tokenizer import save_tokenizer, train_bpe, wrap
    from arm.tokenizer.model import VisualTokenizer
    from arm.tokenizer.vocab import SPECIALS

    root = tmp_path_factory.mktemp("arm-model")
    torch.manual_seed(0)
    vt = VisualTokenizer.build(load_config(preset="micro").tokenizer, caption_vocab=[*SPECIALS, "a"], text_dim=8, distill_dim=8)
    vt.save_pretrained(root / "tokenizer")
    tok, layout = wrap(train_bpe(TEXTS, 300, 1), vt.codebook_size, tuple(vt.grid), tuple(vt.levels))
    model_dir = root / "arm-base"
    save_tokenizer(tok, layout, model_dir)
    cfg = LlamaConfig(vocab_size=layout.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    LlamaForCausalLM(cfg).save_pretrained(model_dir)
    (model_dir / "manifest.json").write_text(json.dumps({"visual_tokenizer": {"path": "../tokenizer"}}))
    return model_dir


@pytest.fixture(scope="module")
def pipe(model_dir):
    return ArmPipeline.from_pretrained(model_dir)


def test_pipeline_tasks_and_mixed_batch(pipe):
    h, w = pipe.layout.grid
    size = pipe.visual.image_size
    images = pipe.generate(["a red circle", "a blue square"], n=2, seed=3)
    assert len(images) == 4 and all(isinstance(im, Image.Image) and im.size == (size, size) for im in images)
    again = pipe.generate(["a blue square"], n=2, seed=5)  # prompt 1's samples had seeds 5 and 6
    assert [im.tobytes() for im in again] == [im.tobytes() for im in images[2:]]

    answers = pipe.describe(images[:2], ["what colour is the circle?", None], max_new_tokens=6)
    assert len(answers) == 2 and all(isinstance(a, str) for a in answers)
    edited = pipe.edit(images[:1], ["make the circle green"], seed=1)
    assert edited[0].size == (size, size)

    # one mixed batch gives what the separate calls give (same seeds)
    mixed = pipe.run([Task("describe", None, images[1], seed=1, max_new_tokens=6),
                      Task("generate", "a red circle", seed=3), Task("edit", "make the circle green", images[0], seed=1)])
    assert mixed[0] == answers[1]
    assert mixed[1].tobytes() == images[0].tobytes()
    assert mixed[2].tobytes() == edited[0].tobytes()


def test_token_level_api(pipe):
    lay = pipe.layout
    src = pipe.encode_images([Image.new("RGB", (48, 48), (255, 0, 0))])[0].flatten().tolist()  # [h, w] per image
    prompts = [format_prompt("generate", lay, text=pipe.encode_text("a red circle")),
               format_prompt("edit", lay, image=src, text=pipe.encode_text("make it blue"))]
    assert uncond_prompt(prompts[0], lay) == [lay.bos, lay.uncond, lay.boi]
    assert uncond_prompt(prompts[1], lay) == format_prompt("edit", lay, image=src, uncond=True)
    codes = pipe.sample_image_tokens(prompts, cfg_scale=3.0, seed=[7, 8])
    assert codes.shape == (2, lay.tokens_per_image) and codes.dtype == torch.long
    assert int(codes.min()) >= 0 and int(codes.max()) < lay.codebook_size
    assert torch.equal(codes[1:], pipe.sample_image_tokens(prompts[1:], cfg_scale=3.0, seed=[8]))
    texts = pipe.sample_text_tokens([format_prompt("understand", lay, image=src)], max_new_tokens=4)
    assert len(texts) == 1 and all(t < lay.n_text for t in texts[0]) and len(texts[0]) <= 4
    with pytest.raises(ValueError, match="empty"):
        pipe.encode_text("  ")
    # a literal special token in user text stays text
    assert all(t < lay.n_text for t in pipe.encode_text("a <eos> <boi> circle"))


def test_cli_generate_describe_edit(model_dir, tmp_path):
    out = tmp_path / "out.png"
    res = runner.invoke(app, ["generate", "a red circle", "-o", str(out), "-n", "2", "--model", str(model_dir), "--seed", "1"])
    assert res.exit_code == 0, res.output
    paths = [tmp_path / "out_0.png", tmp_path / "out_1.png"]
    assert all(p.is_file() for p in paths) and Image.open(paths[0]).size == (48, 48)
    res = runner.invoke(app, ["describe", str(paths[0]), "--question", "what colour?", "--model", str(model_dir),
                              "--max-new-tokens", "4"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["edit", str(paths[0]), "make it blue", "-o", str(tmp_path / "e.png"), "--model",
                              str(model_dir), "--jacobi", "3"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "e.png").is_file()


@pytest.mark.parametrize(
    "args,needle",
    [
        (["generate", "", "-o", "{tmp}/o.png"], "prompt is empty"),
        (["generate", "   ", "-o", "{tmp}/o.png"], "prompt is empty"),
        (["generate", "a circle", "-o", "{tmp}/o.unknownext"], "o.unknownext"),
        (["describe", "{tmp}/missing.png"], "missing.png: no such file"),
        (["describe", "{tmp}/bad.png"], "bad.png: unreadable image"),
        (["describe", "{tmp}/good.png", "--question", ""], "--question is empty"),
        (["edit", "{tmp}/missing.png", "make it blue", "-o", "{tmp}/o.png"], "missing.png: no such file"),
        (["edit", "{tmp}/bad.png", "make it blue", "-o", "{tmp}/o.png"], "bad.png: unreadable image"),
        (["edit", "{tmp}/good.png", " ", "-o", "{tmp}/o.png"], "instruction is empty"),
        (["generate", "a circle", "-o", "{tmp}/o.png", "--model", "{tmp}/nomodel"], "nomodel: no such model dir"),
        (["generate", "a circle", "-o", "{tmp}/o.png", "--temperature", "-1"], "temperature"),
    ],
)
def test_cli_bad_input_exits_2_naming_it(tmp_path, args, needle):
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    Image.new("RGB", (8, 8)).save(tmp_path / "good.png")
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    res = runner.invoke(app, args)
    assert res.exit_code == 2, res.output
    assert needle.replace("{tmp}", str(tmp_path)) in res.output
    assert not (tmp_path / "o.png").exists()


def test_cli_no_default_model(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    from arm.cli import app as cli_app

    params = tmp_path / "params.yaml"
    params.write_text("sampling:\n  model_dirs: [models/none-here]\n")
    res = runner.invoke(cli_app, ["generate", "a circle", "-o", "o.png", "--params", str(params)])
    assert res.exit_code == 2 and "models/none-here" in res.output


def _write_model(model_dir, codebook_size, grid, levels, manifest):
    from arm.text.tokenizer import save_tokenizer, train_bpe, wrap

    tok, layout = wrap(train_bpe(TEXTS, 300, 1), codebook_size, tuple(grid), tuple(levels))
    save_tokenizer(tok, layout, model_dir)
    cfg = LlamaConfig(vocab_size=layout.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(model_dir)
    (model_dir / "manifest.json").write_text(json.dumps(manifest))
    return layout


def test_manifest_tokenizer_fingerprint_must_match(model_dir, tmp_path):
    from arm.tokenizer.tokens import tokenizer_fingerprint

    vt_dir = model_dir.parent / "tokenizer"
    levels = tuple(json.loads((vt_dir / "config.json").read_text())["levels"])
    shape = (int(np.prod(levels)), (3, 3), levels)
    good = tmp_path / "good"
    _write_model(good, *shape, {"visual_tokenizer": {"kind": "visual_tokenizer", "path": str(vt_dir),
                                                     "sha256": tokenizer_fingerprint(vt_dir)}})
    assert ArmPipeline.from_pretrained(good).visual is not None
    bad = tmp_path / "bad"
    _write_model(bad, *shape, {"visual_tokenizer": {"path": str(vt_dir), "sha256": "0" * 20}})
    with pytest.raises(ValueError, match="changed since"):
        ArmPipeline.from_pretrained(bad)
    res = runner.invoke(app, ["generate", "a circle", "-o", str(tmp_path / "o.png"), "--model", str(bad)])
    assert res.exit_code == 2 and "changed since" in res.output


def test_oracle_manifest_builds_the_oracle_tokenizer(tmp_path, micro_cfg):
    from arm.rl.codec import OracleVisualTokenizer

    world = micro_cfg.world
    oracle = OracleVisualTokenizer(world)
    d = tmp_path / "oracle-model"
    _write_model(d, oracle.codebook_size, oracle.grid, oracle.levels,
                 {"visual_tokenizer": {"kind": "oracle", "world": world.model_dump(mode="json")}})
    pipe = ArmPipeline.from_pretrained(d)
    assert isinstance(pipe.visual, OracleVisualTokenizer)
    (image,) = pipe.generate("a red circle", cfg_scale=1.0, seed=0)
    assert image.size == (world.image_size, world.image_size)
