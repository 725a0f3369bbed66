"""The promotion gate both ways: a good candidate passes and is promoted, a degraded one is
rejected (thresholds, prior-only floor, regression against the promoted model), and `arm gate`
exits non-zero on rejection."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from arm.config import ConfigError, load_config
from arm.eval.gate import GateError, gate, promote

REPO = Path(__file__).resolve().parents[1]


def cfg_for(tmp: Path, *overrides: str):
    return load_config(REPO / "params.yaml", preset="micro", overrides=[
        f"eval.prompts.dir={tmp / 'prompts'}", f"eval.metrics_dir={tmp / 'metrics'}",
        f"eval.reports_dir={tmp / 'reports'}", f"eval.fmnist.cache_dir={tmp / 'cache'}",
        f"gate.output={tmp / 'gate.json'}", f"gate.promoted={tmp / 'promoted.json'}",
        "gate.thresholds={shapes_geneval.overall: 0.5, understanding.vqa_accuracy: 0.5}",
        "gate.min_over_floor={shapes_geneval.overall: 0.1}",
        "gate.max_regression={shapes_geneval.overall: 0.02, shapes_edit.overall: 0.5, understanding.vqa_accuracy: 0.02}",
        *overrides])


def metrics_file(tmp: Path, name: str, geneval: float, vqa: float, edit: float = 5.0, floor: float = 0.1,
                 manifest: str = "m1", model_dir: Path | None = None) -> Path:
    path = tmp / f"eval_{name}.json"
    path.write_text(json.dumps({
        "model": name, "prompts": {"manifest_sha256": manifest}, "model_dir": str(model_dir) if model_dir else None,
        "scores": {"shapes_geneval": {"overall": geneval}, "understanding": {"vqa_accuracy": vqa},
                   "shapes_edit": {"overall": edit}},
        "floor": {"shapes_geneval": {"overall": floor}},
    }))
    return path


def test_thresholds_floor_and_missing_metrics(tmp_path):
    cfg = cfg_for(tmp_path)
    ok = gate(cfg, metrics_file(tmp_path, "a", 0.6, 0.7))
    assert ok.passed and ok.promoted is None
    assert {c.kind for c in ok.checks} == {"threshold", "over_floor"}  # nothing promoted: no regression checks
    written = json.loads((tmp_path / "gate.json").read_text())
    assert written["passed"] is True and written["failed"] == []
    low = gate(cfg, metrics_file(tmp_path, "b", 0.45, 0.7))
    assert not low.passed and low.to_json()["failed"] == ["threshold:shapes_geneval.overall"]
    prior_only = gate(cfg, metrics_file(tmp_path, "c", 0.55, 0.7, floor=0.5))  # above threshold, not above its floor
    assert prior_only.to_json()["failed"] == ["over_floor:shapes_geneval.overall"]
    missing = tmp_path / "eval_d.json"
    missing.write_text(json.dumps({"model": "d", "scores": {"shapes_geneval": {"overall": 0.9}}, "floor": {}}))
    res = gate(cfg, missing)
    assert set(res.to_json()["failed"]) == {"threshold:understanding.vqa_accuracy", "over_floor:shapes_geneval.overall"}
    assert json.loads((tmp_path / "gate.json").read_text())["passed"] is False


def test_regression_against_the_promoted_model(tmp_path):
    cfg = cfg_for(tmp_path)
    first = metrics_file(tmp_path, "v1", 0.8, 0.9, edit=6.0)
    res = gate(cfg, first)
    record = promote(cfg, res, first)
    assert record["model"] == "v1" and json.loads((tmp_path / "promoted.json").read_text())["scores"] == record["scores"]
    within = gate(cfg, metrics_file(tmp_path, "v2", 0.79, 0.89, edit=5.6))  # inside every tolerance
    assert within.passed and within.promoted == "v1"
    worse = gate(cfg, metrics_file(tmp_path, "v3", 0.7, 0.95, edit=6.0))  # better VQA, but GenEval regressed
    assert worse.to_json()["failed"] == ["regression:shapes_geneval.overall"]
    other_sets = gate(cfg, metrics_file(tmp_path, "v4", 0.9, 0.95, manifest="m2"))  # better, but not comparable
    assert other_sets.to_json()["failed"] == ["comparable:prompts"]
    assert "m1" in other_sets.checks[-1].note and "m2" in other_sets.checks[-1].note and "--rescore-promoted" in other_sets.checks[-1].note
    with pytest.raises(GateError, match="failed the gate"):
        promote(cfg, worse, tmp_path / "eval_v3.json")
    assert json.loads((tmp_path / "promoted.json").read_text())["model"] == "v1"


def test_a_metric_missing_from_the_promoted_record_fails(tmp_path):
    cfg = cfg_for(tmp_path)
    (tmp_path / "promoted.json").write_text(json.dumps({
        "model": "old", "prompts": {"manifest_sha256": "m1"},
        "scores": {"shapes_geneval": {"overall": 0.6}, "shapes_edit": {"overall": 5.0}}}))  # no VQA recorded
    res = gate(cfg, metrics_file(tmp_path, "new", 0.8, 0.9))
    assert res.to_json()["failed"] == ["regression:understanding.vqa_accuracy"]
    assert "not in the promoted record" in [c for c in res.checks if c.metric == "understanding.vqa_accuracy"
                                            and c.kind == "regression"][0].note


def test_regression_tolerance_is_a_fraction_of_the_metrics_range(tmp_path):
    """A drop of 0.05 on a metric whose range (reconstruction - floor) is 0.4: 12.5% of it, over a 10% tolerance."""
    cfg = cfg_for(tmp_path, "gate.max_regression={shapes_geneval.overall: 0.1}")
    (tmp_path / "promoted.json").write_text(json.dumps({
        "model": "old", "prompts": {"manifest_sha256": "m1"}, "scores": {"shapes_geneval": {"overall": 0.7}},
        "floor": {"shapes_geneval": {"overall": 0.4}}, "reconstruction": {"shapes_geneval": {"overall": 0.8}}}))
    ok = gate(cfg, metrics_file(tmp_path, "a", 0.67, 0.9))
    assert ok.passed
    assert [c.limit for c in ok.checks if c.kind == "regression"] == [pytest.approx(0.7 - 0.1 * 0.4)]
    assert gate(cfg, metrics_file(tmp_path, "b", 0.65, 0.9)).to_json()["failed"] == ["regression:shapes_geneval.overall"]
    with pytest.raises(ConfigError, match="fraction"):
        cfg_for(tmp_path, "gate.max_regression={shapes_edit.overall: 1.0}")


def test_the_promoted_model_is_rescored_on_new_prompt_sets_by_content_hash(tmp_path):
    from arm.eval.gate import rescore_promoted

    cfg = cfg_for(tmp_path)
    v1, v2 = tmp_path / "models" / "v1", tmp_path / "models" / "v2"
    for d, w in ((v1, b"one"), (v2, b"two")):
        d.mkdir(parents=True)
        (d / "model.safetensors").write_bytes(w)
    first = metrics_file(tmp_path, "v1", 0.8, 0.9, model_dir=v1)
    res = gate(cfg, first)
    assert res.candidate_sha256 and json.loads((tmp_path / "gate.json").read_text())["candidate_sha256"] == res.candidate_sha256
    assert promote(cfg, res, first)["model_sha256"] == res.candidate_sha256
    candidate = metrics_file(tmp_path, "v2", 0.85, 0.9, manifest="m2", model_dir=v2)
    assert gate(cfg, candidate).to_json()["failed"] == ["comparable:prompts"]
    with pytest.raises(GateError, match="not the promoted model"):  # v2's scores cannot stand in for v1's
        rescore_promoted(cfg, candidate)
    record = rescore_promoted(cfg, metrics_file(tmp_path, "v1_m2", 0.84, 0.9, manifest="m2", model_dir=v1))
    assert record["model"] == "v1" and record["prompts"] == {"manifest_sha256": "m2"}
    rescored = gate(cfg, candidate)
    assert rescored.passed and any(c.kind == "regression" for c in rescored.checks)


def test_bad_inputs_are_clear(tmp_path):
    cfg = cfg_for(tmp_path)
    with pytest.raises(GateError, match="not found"):
        gate(cfg, tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(GateError, match="invalid JSON"):
        gate(cfg, tmp_path / "bad.json")
    with pytest.raises(ConfigError, match="benchmark"):
        cfg_for(tmp_path, "gate.thresholds={geneval_overall: 0.5}")


def test_evaluated_good_model_passes_degraded_is_rejected(tmp_path):
    """Real `evaluate` runs, not hand-written metrics: the reference pipeline at its ceiling and the
    same pipeline with 60% of its outputs corrupted."""
    from arm.eval.prompts import build_prompt_sets, load_prompt_sets
    from arm.eval.reference import DegradedPipeline, OraclePipeline
    from arm.eval.run import evaluate

    cfg = cfg_for(tmp_path)
    build_prompt_sets(cfg)
    sets, _, _ = load_prompt_sets(cfg)
    evaluate(cfg, None, pipeline=OraclePipeline(cfg, sets), name="good")
    good = tmp_path / "metrics" / "eval_good.json"
    res = gate(cfg, good)
    assert res.passed
    promote(cfg, res, good)
    evaluate(cfg, None, pipeline=DegradedPipeline(OraclePipeline(cfg, sets), 0.6, seed=0), name="degraded")
    bad = gate(cfg, tmp_path / "metrics" / "eval_degraded.json")
    assert not bad.passed and bad.promoted == "good"
    assert "regression:shapes_geneval.overall" in bad.to_json()["failed"]
    assert json.loads((tmp_path / "promoted.json").read_text())["model"] == "good"


@pytest.mark.slow
def test_arm_gate_exit_codes(tmp_path):
    from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS, temporary_settings
    from typer.testing import CliRunner

    from arm.cli import app

    sets = ["--preset", "micro", f"--set=gate.output={tmp_path / 'gate.json'}",
            f"--set=gate.promoted={tmp_path / 'promoted.json'}",
            "--set=gate.thresholds={shapes_geneval.overall: 0.5}", "--set=gate.min_over_floor={}"]
    good, bad = metrics_file(tmp_path, "good", 0.8, 0.9), metrics_file(tmp_path, "bad", 0.3, 0.9)
    runner = CliRunner()
    with temporary_settings(updates={PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS: 180}):
        r = runner.invoke(app, ["gate", "--candidate", str(good), "--promote", *sets])
        assert r.exit_code == 0, r.output
        assert json.loads((tmp_path / "promoted.json").read_text())["model"] == "good"
        r = runner.invoke(app, ["gate", "--candidate", str(bad), "--promote", *sets])
        assert r.exit_code == 1 and "rejected" in r.output
        assert json.loads((tmp_path / "gate.json").read_text())["passed"] is False
        assert json.loads((tmp_path / "promoted.json").read_text())["model"] == "good"
        r = runner.invoke(app, ["gate", "--candidate", str(tmp_path / "missing.json"), *sets])
        assert r.exit_code == 1 and "not found" in r.output


# ----------------------------------------------------------------------------- a real trained model


def train_tiny_model(cfg, out: Path):
    """A real ArmPipeline model, trained in seconds: a 2-layer Llama over the perfect visual tokenizer
    (one code per cell) on every scene of a one-cell world, with condition dropout for CFG."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from arm.data import shapes
    from arm.data.shapes import Scene, ShapeObject
    from arm.text.formats import format_example
    from arm.text.tokenizer import save_tokenizer, train_bpe, wrap
    from arm.train.perfect import PerfectVisualTokenizer

    w = cfg.world
    scenes = [Scene.of([ShapeObject(0, 0, k, c, s)]) for k in w.kinds for c in w.colors for s in w.sizes]
    captions = [shapes.caption(sc, w.grid) for sc in scenes]
    vt = PerfectVisualTokenizer(w)
    tok, layout = wrap(train_bpe(captions * 5, 200, 1), vt.codebook_size, tuple(vt.grid), tuple(vt.levels))
    docs = []
    for sc, cap in zip(scenes, captions):
        text, codes = tok(cap, add_special_tokens=False)["input_ids"], vt.encode_scene(sc)
        docs += [format_example("generate", layout, text=text, target_image=codes, uncond=u) for u in (False, True)]
    n, length = len(docs), max(len(d) for d, _ in docs)
    ids, att = torch.full((n, length), layout.pad), torch.zeros(n, length, dtype=torch.long)
    labels = torch.full((n, length), -100)
    for i, (d, mask) in enumerate(docs):
        ids[i, : len(d)], att[i, : len(d)] = torch.tensor(d), 1
        labels[i, : len(d)] = torch.tensor([t if k else -100 for t, k in zip(d, mask)])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model on a shared 2-core machine: one thread is fastest
    try:
        torch.manual_seed(0)
        model = LlamaForCausalLM(LlamaConfig(vocab_size=layout.vocab_size, hidden_size=64, intermediate_size=128,
                                             num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                             max_position_embeddings=128))
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
        for _ in range(200):
            loss = model(input_ids=ids, attention_mask=att, labels=labels).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    save_tokenizer(tok, layout, out)
    model.save_pretrained(out)
    return vt


@pytest.mark.slow
def test_real_model_passes_and_its_noised_copy_is_rejected(tmp_path):
    from arm.eval.prompts import build_prompt_sets
    from arm.eval.reference import noise_weights
    from arm.eval.run import evaluate
    from arm.sample.pipeline import ArmPipeline

    cfg = cfg_for(tmp_path, "world.grid=1", "world.image_size=24", "world.min_objects=1", "world.max_objects=1",
                  "world.holdout.bindings=[{color: red, kind: circle}]",  # one row: a kind x row binding would hold out every triangle
                  "data.sources=[{type: shapes, n_scenes: 10}]", "eval.benchmarks=[shapes_geneval]",
                  "eval.prompts.geneval_per_category=24", "eval.sampling.temperature=0", "eval.sampling.cfg_scale=1",
                  "gate.thresholds={shapes_geneval.overall: 0.8}", "gate.min_over_floor={shapes_geneval.overall: 0.3}",
                  "gate.max_regression={shapes_geneval.overall: 0.05}")
    build_prompt_sets(cfg)
    vt = train_tiny_model(cfg, tmp_path / "arm-good")
    pipe = ArmPipeline.from_pretrained(tmp_path / "arm-good", visual_tokenizer=vt, config=cfg.sampling)
    good = evaluate(cfg, tmp_path / "arm-good", pipeline=pipe)
    assert good["floor_source"].startswith("fixed candidate-free references")
    res = gate(cfg, tmp_path / "metrics" / "eval_arm-good.json")
    assert res.passed, res.to_json()
    promote(cfg, res, tmp_path / "metrics" / "eval_arm-good.json")

    noise_weights(pipe.model, 1.0, seed=0)  # the same weights plus noise of their own scale
    noised = evaluate(cfg, None, pipeline=pipe, name="arm-noised")
    assert noised["scores"]["shapes_geneval"]["overall"] < good["scores"]["shapes_geneval"]["overall"]
    bad = gate(cfg, tmp_path / "metrics" / "eval_arm-noised.json")
    assert not bad.passed
    assert {"threshold:shapes_geneval.overall", "regression:shapes_geneval.overall"} <= set(bad.to_json()["failed"])
    assert json.loads((tmp_path / "promoted.json").read_text())["model"] == "arm-good"
