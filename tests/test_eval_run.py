"""arm.eval.run.evaluate end to end: reference pipelines with known scores, reconstruction references through a
tokenizer, the written metrics and report, and `arm evaluate` on a real (random) model dir."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from arm.config import PALETTE, load_config
from arm.eval.image_metrics import PSNR_CAP
from arm.eval.prompts import build_prompt_sets, load_prompt_sets
from arm.eval.reference import DegradedPipeline, OraclePipeline
from arm.eval.run import EvalError, evaluate

REPO = Path(__file__).resolve().parents[1]


def micro(tmp: Path, *overrides: str):
    return load_config(REPO / "params.yaml", preset="micro", overrides=[
        f"eval.prompts.dir={tmp / 'prompts'}", f"eval.metrics_dir={tmp / 'metrics'}",
        f"eval.reports_dir={tmp / 'reports'}", f"eval.fmnist.cache_dir={tmp / 'cache'}", *overrides])


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("eval")
    cfg = micro(tmp)
    build_prompt_sets(cfg)
    sets, _, _ = load_prompt_sets(cfg)
    return tmp, cfg, sets


class CellColourTokenizer:
    """A lossy stand-in tokenizer: one code per grid cell = its dominant palette colour, decoded as a
    filled cell. Keeps colour and position, loses kind and size."""

    def __init__(self, world):
        self.world = world
        self.colours = [tuple(world.background)] + [PALETTE[c] for c in world.colors]
        self.codebook_size = len(self.colours)

    def encode(self, images):
        g, c = self.world.grid, self.world.cell
        out = torch.zeros(len(images), g, g, dtype=torch.long)
        pal = np.asarray(self.colours, dtype=np.float32)
        for b, im in enumerate(images):
            arr = np.asarray(im.convert("RGB").resize((self.world.image_size,) * 2), dtype=np.float32)
            for r in range(g):
                for k in range(g):
                    px = arr[r * c : (r + 1) * c, k * c : (k + 1) * c].reshape(-1, 3)
                    idx = ((px[:, None] - pal[None]) ** 2).sum(-1).argmin(1)
                    counts = np.bincount(idx, minlength=len(pal))
                    out[b, r, k] = int(counts[1:].argmax() + 1) if counts[1:].max() > 8 else 0
        return out

    def decode(self, codes):
        g, c, s = self.world.grid, self.world.cell, self.world.image_size
        out = torch.zeros(len(codes), 3, s, s)
        for b in range(len(codes)):
            for r in range(g):
                for k in range(g):
                    col = torch.tensor(self.colours[int(codes[b, r, k])], dtype=torch.float32) / 255
                    out[b, :, r * c : (r + 1) * c, k * c : (k + 1) * c] = col[:, None, None]
        return out


def test_oracle_pipeline_scores_its_reconstruction_reference_and_beats_the_floor(setup):
    tmp, cfg, sets = setup
    m = evaluate(cfg, None, pipeline=OraclePipeline(cfg, sets), name="oracle")
    assert set(m["scores"]) == {"shapes_geneval", "shapes_wise", "shapes_edit", "understanding", "fmnist"}
    assert m["skipped"] == {"tokenizer": "no visual tokenizer"}
    assert m["reconstruction_source"] == "ground truth (no visual tokenizer)"
    for bench, scores in m["scores"].items():
        if bench == "fmnist":  # its understanding reference is the judge's own reading (a weak reader)
            continue
        for key, value in scores.items():
            if key in m["reconstruction"][bench]:
                assert value == m["reconstruction"][bench][key], (bench, key)
    # every score per split, with a 95% interval, by the judge and (generation, edits) the oracle
    for bench, key in [("shapes_geneval", "overall"), ("shapes_edit", "success"), ("understanding", "vqa_accuracy")]:
        for prefix in ("", "novel/", "novel_composition/"):
            lo, hi = m["intervals"][bench][prefix + key]
            assert lo <= m["scores"][bench][prefix + key] <= hi
    assert m["scores"]["shapes_geneval"]["oracle/overall"] == 1.0 and m["scores"]["shapes_geneval"]["judge_agreement"] == 1.0
    s, f = m["scores"], m["floor"]
    assert s["shapes_geneval"]["overall"] == 1.0 > f["shapes_geneval"]["overall"]
    assert s["shapes_wise"]["score"] == 1.0 > f["shapes_wise"]["score"]
    assert s["shapes_edit"]["overall"] == 10.0 and f["shapes_edit"]["overall"] == 0.0
    assert s["understanding"]["vqa_accuracy"] == 1.0 > f["understanding"]["vqa_accuracy"]
    assert s["understanding"]["caption_f1"] == 1.0 > f["understanding"]["caption_f1"]
    assert s["understanding"]["pope_f1"] == 1.0 > f["understanding"]["pope_f1"]
    assert s["fmnist"]["understanding_accuracy"] == 1.0 > f["fmnist"]["understanding_accuracy"]
    assert s["fmnist"]["generation_accuracy"] == m["reconstruction"]["fmnist"]["generation_accuracy"] > f["fmnist"]["generation_accuracy"]
    written = json.loads((tmp / "metrics" / "eval_oracle.json").read_text())
    assert written == json.loads(json.dumps(m))
    report = tmp / "reports" / "eval_oracle"
    html = (report / "index.html").read_text()
    assert "shapes_geneval" in html and "normalized" in html
    pngs = {p.name for p in report.glob("*.png")}
    assert {f"geneval_{c}.png" for c in ("single_object", "two_object", "counting", "colors", "position", "color_attr")} <= pngs
    assert {"wise.png", "fmnist_generation.png", "understanding_vqa.png"} <= pngs
    assert any(p.startswith("edit_") for p in pngs)
    for p in pngs:
        with Image.open(report / p) as im:
            assert im.size[0] > 0


def test_evaluate_is_deterministic(setup):
    tmp, cfg, sets = setup
    evaluate(cfg, None, pipeline=DegradedPipeline(OraclePipeline(cfg, sets), 0.5, seed=1), name="d1")
    evaluate(cfg, None, pipeline=DegradedPipeline(OraclePipeline(cfg, sets), 0.5, seed=1), name="d2")
    a = json.loads((tmp / "metrics" / "eval_d1.json").read_text())
    b = json.loads((tmp / "metrics" / "eval_d2.json").read_text())
    assert a["scores"] == b["scores"] and a["floor"] == b["floor"]


def test_degraded_pipeline_scores_lower(setup):
    tmp, cfg, sets = setup
    good = evaluate(cfg, None, pipeline=OraclePipeline(cfg, sets), name="good")["scores"]
    bad = evaluate(cfg, None, pipeline=DegradedPipeline(OraclePipeline(cfg, sets), 0.6, seed=0), name="bad")["scores"]
    for bench, key in [("shapes_geneval", "overall"), ("shapes_edit", "overall"),
                       ("understanding", "vqa_accuracy"), ("fmnist", "understanding_accuracy")]:
        assert bad[bench][key] < good[bench][key], (bench, key)


def test_reconstruction_references_through_a_tokenizer(setup):
    tmp, cfg, sets = setup
    cfg = micro(tmp, "eval.benchmarks=[shapes_geneval, understanding, tokenizer]")
    tok = CellColourTokenizer(cfg.world)
    m = evaluate(cfg, None, pipeline=OraclePipeline(cfg, sets), tokenizer=tok, name="withtok")
    assert m["reconstruction_source"] == "ground truth through the visual tokenizer"
    # colour and position survive, kind and size do not
    assert m["reconstruction"]["shapes_geneval"]["color_attr"] < 1.0
    assert m["reconstruction"]["understanding"]["caption_f1"] < 1.0
    t = m["scores"]["tokenizer"]
    assert 0 < t["psnr"] < PSNR_CAP and 0 < t["ssim"] < 1
    assert 0 < t["code_usage"] <= 1 and t["oracle_exact"] < 1.0
    assert (tmp / "reports" / "eval_withtok" / "tokenizer.png").is_file()


def test_bad_pipelines_are_named(setup):
    tmp, cfg, sets = setup

    class Short(OraclePipeline):
        def generate(self, prompts, n=1, **kw):
            return super().generate(prompts, n, **kw)[:-1]

    with pytest.raises(EvalError, match="generate returned"):
        evaluate(cfg, None, pipeline=Short(cfg, sets), name="short")
    with pytest.raises(EvalError, match="no edit"):
        evaluate(cfg, None, pipeline=type("P", (), {"generate": lambda *a, **k: [], "describe": lambda *a, **k: []})(), name="x")
    with pytest.raises(EvalError, match="not found"):
        evaluate(cfg, tmp / "missing-model")


# ----------------------------------------------------------------------------- a real model dir


def random_model_dir(root: Path, seed: int = 0) -> Path:
    """A model dir as pretraining exports one, with random weights (as tests/test_sample_pipeline.py)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from arm.text.tokenizer import save_tokenizer, train_bpe, wrap
    from arm.tokenizer.model import VisualTokenizer
    from arm.tokenizer.vocab import SPECIALS

    torch.manual_seed(seed)
    vt = VisualTokenizer.build(load_config(preset="micro").tokenizer, caption_vocab=[*SPECIALS, "a"], text_dim=8, distill_dim=8)
    vt.save_pretrained(root / "tokenizer")
    texts = ["a small red circle in the top left", "what shape is in the center?", "make the square blue",
             "a photo of a sneaker", "is this a top?", "describe the image."] * 10
    tok, layout = wrap(train_bpe(texts, 300, 1), vt.codebook_size, tuple(vt.grid), tuple(vt.levels))
    model_dir = root / "arm-base"
    save_tokenizer(tok, layout, model_dir)
    cfg = LlamaConfig(vocab_size=layout.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    LlamaForCausalLM(cfg).save_pretrained(model_dir)
    (model_dir / "manifest.json").write_text(json.dumps({"visual_tokenizer": {"path": "../tokenizer"}}))
    return model_dir


@pytest.mark.slow
def test_arm_evaluate_cli_on_a_model_dir(tmp_path):
    from typer.testing import CliRunner

    from arm.cli import app

    model_dir = random_model_dir(tmp_path)
    sets = [f"--set=eval.prompts.dir={tmp_path / 'prompts'}", f"--set=eval.metrics_dir={tmp_path / 'metrics'}",
            f"--set=eval.reports_dir={tmp_path / 'reports'}", f"--set=eval.fmnist.cache_dir={tmp_path / 'cache'}",
            "--set=sampling.max_new_tokens=8"]
    runner = CliRunner()
    from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS, temporary_settings

    # The ephemeral API server starts in a subprocess; on a busy 2-core machine it needs longer.
    with temporary_settings(updates={PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS: 180}):
        _cli_run(runner, app, model_dir, sets, tmp_path)


def _cli_run(runner, app, model_dir, sets, tmp_path):
    r = runner.invoke(app, ["evaluate", str(model_dir), "--preset", "micro", *sets])
    assert r.exit_code == 1 and "arm eval-prompts" in r.output  # no prompt sets yet: a clear error
    r = runner.invoke(app, ["eval-prompts", "--preset", "micro", *sets])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["evaluate", str(model_dir), "--preset", "micro", *sets])
    assert r.exit_code == 0, r.output
    m = json.loads((tmp_path / "metrics" / "eval_arm-base.json").read_text())
    assert m["reconstruction_source"] == "ground truth through the visual tokenizer"
    assert m["floor_source"].startswith("fixed candidate-free references")
    assert set(m["scores"]) == {"shapes_geneval", "shapes_wise", "shapes_edit", "understanding", "fmnist", "tokenizer"}
    assert 0 <= m["scores"]["tokenizer"]["code_usage"] <= 1
    assert (tmp_path / "reports" / "eval_arm-base" / "index.html").is_file()
    r = runner.invoke(app, ["evaluate", str(tmp_path / "nope"), "--preset", "micro", *sets])
    assert r.exit_code == 1 and "not found" in " ".join(r.output.split())


def test_noise_weights_degrades_deterministically():
    from transformers import LlamaConfig, LlamaForCausalLM

    from arm.eval.reference import noise_weights

    def model():
        torch.manual_seed(0)
        return LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                            num_attention_heads=4, num_key_value_heads=2))

    ids = torch.arange(10).unsqueeze(0)
    clean, a, b = model(), model(), model()
    noise_weights(a, 0.5, seed=1)
    noise_weights(b, 0.5, seed=1)
    with torch.no_grad():
        la, lb, lc = a(ids).logits, b(ids).logits, clean(ids).logits
    assert torch.equal(la, lb) and not torch.allclose(la, lc)
    w0, w1 = clean.model.layers[0].mlp.up_proj.weight.detach(), a.model.layers[0].mlp.up_proj.weight.detach()
    assert 0.4 < float((w1 - w0).std() / w0.std()) < 0.6


def test_each_benchmark_has_its_own_seed_block(setup):
    tmp, cfg, sets = setup

    class Recording(OraclePipeline):
        seeds: list

        def generate(self, prompts, n=1, seed=None, **kw):
            self.seeds.append((prompts[0], seed))
            return super().generate(prompts, n, **kw)

    runs = []
    for benches in ("[shapes_geneval, shapes_wise]", "[shapes_wise]"):
        p = Recording(cfg, sets)
        p.seeds = []
        evaluate(micro(tmp, f"eval.benchmarks={benches}"), None, pipeline=p, name="seeds")
        runs.append([s for s in p.seeds if s[0] in {i["prompt"] for i in sets["wise"]}])
    assert runs[0] == runs[1] and runs[0]


def test_aspect_benchmark_draws_each_scene_at_its_ratio(tmp_path):
    """A world with 3x4 and 4x3 scenes: `shapes_geneval_aspect` asks for each held-out scene at its
    own aspect ratio and scores it per shape, with the reference, floor and intervals of GenEval."""
    cfg = micro(tmp_path, "world.grids=[[3, 4], [4, 3]]", "eval.benchmarks=[shapes_geneval, shapes_geneval_aspect]")
    build_prompt_sets(cfg)
    sets, _, manifest = load_prompt_sets(cfg)
    items = sets["geneval_aspect"]
    assert {tuple(i["grid"]) for i in items} == {(3, 4), (4, 3)} and {i["aspect_ratio"] for i in items} == {"4:3", "3:4"}
    assert {i["split"] for i in items} == {"novel", "novel_composition"}
    assert manifest["training_overlap"].get("geneval_aspect", 0) == 0

    asked = []

    class Recording(OraclePipeline):
        def generate(self, prompts, n=1, aspect_ratio=None, **kw):
            asked.extend((p, aspect_ratio) for p in prompts)
            return super().generate(prompts, n, aspect_ratio=aspect_ratio, **kw)

    m = evaluate(cfg, None, pipeline=Recording(cfg, sets), name="aspect")
    assert {(i["prompt"], i["aspect_ratio"]) for i in items} <= set(asked)
    s, rec, floor = m["scores"]["shapes_geneval_aspect"], m["reconstruction"]["shapes_geneval_aspect"], \
        m["floor"]["shapes_geneval_aspect"]
    assert s["overall"] == rec["overall"] == 1.0 > floor["overall"] and s["judge_agreement"] == 1.0
    for shape in ("3x4", "4x3"):
        assert s[f"{shape}/overall"] == 1.0
        lo, hi = m["intervals"]["shapes_geneval_aspect"][f"{shape}/overall"]
        assert lo <= 1.0 <= hi
    assert {"geneval_aspect_3x4.png", "geneval_aspect_4x3.png"} <= {p.name for p in (tmp_path / "reports" / "eval_aspect").glob("*.png")}
    bad = evaluate(cfg, None, pipeline=DegradedPipeline(Recording(cfg, sets), 0.6, seed=0), name="bad")
    assert bad["scores"]["shapes_geneval_aspect"]["overall"] < 0.8


def test_aspect_benchmark_on_a_square_world_is_skipped_with_its_reason(setup):
    tmp, cfg, sets = setup
    square = cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"benchmarks": ["shapes_geneval_aspect"]})})
    m = evaluate(square, None, pipeline=OraclePipeline(cfg, sets), name="square")
    assert m["scores"] == {} and "world.grids is empty" in m["skipped"]["shapes_geneval_aspect"]
