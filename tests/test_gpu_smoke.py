"""The GPU smoke (arm/smoke.py, scripts/gpu_smoke.sh): its size, its checks, and a tiny CPU run end to end."""

from __future__ import annotations

import json
import math

import pytest
import torch

from arm import smoke
from tests.conftest import REPO

PARAMS = REPO / "params.yaml"


def test_gpu_size_is_a_1b_model_of_the_7b_layout(tmp_path):
    from arm.config import load_config
    from arm.model.build import count_parameters, meta_model
    from arm.model.plan import planned_layout

    size = smoke.GPU_1B
    total = smoke.vocab_target(PARAMS, size)
    # Qwen2.5's text tokens, 7 specials, 5 aspect-bucket grid tokens, the FSQ codes
    assert total == planned_layout(load_config(PARAMS, "7b")).vocab_size == 151665 + 7 + 5 + 15360
    probe = load_config(PARAMS, "7b", [f"world.grid={size.grid}", f"world.image_size={size.image_size}"])
    n_text = smoke.text_vocab(probe, total)
    cfg = load_config(PARAMS, "7b", smoke.overrides(size, size.model, tmp_path, "main", tmp_path / "tok", n_text,
                                                    tmp_path / "init", size.steps))
    layout = planned_layout(cfg)  # the stand-in paths do not exist: planned from text.vocab_size
    assert layout.vocab_size == total and layout.tokens_per_image == 576
    assert 0.9e9 < count_parameters(meta_model(cfg.model, layout)) < 1.3e9
    # every 7b switch survives the overrides
    seven = load_config(PARAMS, "7b")
    for a, b in ((cfg.model.arch, seven.model.arch), (cfg.pretrain.zero_stage, 3), (cfg.pretrain.precision, "bf16"),
                 (cfg.model.attn_implementation, seven.model.attn_implementation),
                 (cfg.model.factorized_image_embeddings, True), (cfg.text.seq_len, seven.text.seq_len)):
        assert a == b
    assert cfg.model.init_from == str(tmp_path / "init") and cfg.pretrain.data == "shapes"


def test_stand_in_tokenizer_has_the_asked_size(tmp_path):
    from transformers import AutoTokenizer

    out = smoke.stand_in_tokenizer(["a red circle", "a blue square on the left"] * 20, 3000, tmp_path / "tok")
    tok = AutoTokenizer.from_pretrained(str(out), local_files_only=True)
    assert len(tok) == 3000
    ids = tok("a red circle", add_special_tokens=False)["input_ids"]
    assert ids and max(ids) < 512 and tok.decode(ids) == "a red circle"  # padding rows are never produced


def test_compare_curves_sees_a_changed_loss(tmp_path):
    from arm.curves import write_curve

    write_curve(tmp_path / "curve", [{"step": 1, "loss": 2.0, "loss_edit": None}, {"step": 2, "loss": 1.5, "loss_edit": 1.0}])
    a = smoke.read_curve(tmp_path / "curve")  # the rows as the smoke test reads them back
    same = smoke.compare_curves(a, [dict(r) for r in a])
    assert same == {"steps": [2, 2], "max_abs_loss_diff": 0.0, "max_rel_loss_diff": 0.0}
    b = [dict(a[0]), {**a[1], "loss": 1.65}]
    d = smoke.compare_curves(a, b)
    assert math.isclose(d["max_abs_loss_diff"], 0.15) and math.isclose(d["max_rel_loss_diff"], 0.1)
    missing = [dict(a[0]), {k: v for k, v in a[1].items() if k != "loss_edit"}]
    assert smoke.compare_curves(a, missing)["max_rel_loss_diff"] == math.inf
    shifted = [dict(a[0]), {**a[1], "step": 3}]
    assert smoke.compare_curves(a, shifted)["max_rel_loss_diff"] == math.inf


def test_non_empty_workdir_is_refused(tmp_path, capsys):
    (tmp_path / "stale").mkdir()
    with pytest.raises(SystemExit) as e:
        smoke.main(["--device", "cpu", "--tiny", "--workdir", str(tmp_path), "--params", str(PARAMS)])
    assert e.value.code == 2 and "not empty" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.xdist_group("deepspeed")  # one process group per worker at a time
def test_tiny_cpu_smoke_writes_sane_json(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a visible GPU: the CPU smoke refuses to run (pretraining would take the GPU)")
    out, work = tmp_path / "gpu_smoke.json", tmp_path / "work"
    assert smoke.main(["--device", "cpu", "--tiny", "--out", str(out), "--workdir", str(work),
                       "--params", str(PARAMS)]) == 0
    r = json.loads(out.read_text())
    size = smoke.TINY
    assert not work.exists()  # removed without --keep

    c = r["config"]
    assert (c["arch"], c["zero_stage"], c["precision"], c["attn_implementation"]) == ("qwen2", 3, "bf16", "sdpa")
    assert c["factorized_image_embeddings"] is True and c["vocab_size"] == c["vocab_size_7b"] == size.vocab
    assert c["tokens_per_image"] == size.grid**2 and c["seq_len"] == size.seq_len

    t = r["train"]
    assert t["steps"] == size.steps and t["stopped"] == "done"
    assert t["tokens_seen"] == size.steps * size.micro_batch * size.grad_accum * size.seq_len
    assert t["tokens_per_s"] > 0 and 0 < t["mfu"] < 1 and r["peak_flops_matmul"] > 0
    assert math.isfinite(t["loss_first"]) and t["loss_last"] < t["loss_first"] and t["loss_drop"] > 0
    assert t["loss_first"] < math.log(size.vocab) * 1.5  # a sane start: near uniform over the vocabulary
    assert set(t["val_loss"]) >= {"understand", "generate", "edit"}

    res = r["resume"]
    assert res["ok"] is True and res["stopped_at"] == size.resume_stop and res["steps"] == [size.resume_steps] * 2
    assert res["max_rel_loss_diff"] == 0.0  # bitwise on CPU

    s = r["sampling"]
    for batch, n in zip((1, 16), size.sample_images):
        row = s[f"batch_{batch}"]
        assert row["images"] == row["complete_images"] == n
        assert row["tokens"] == n * size.grid**2 and row["tokens_per_s"] > 0  # <eoi> is forced, not drawn
    # engine vs transformers' generate on the same requests (eager only on CPU: no compile wait in CI)
    assert [(v["batch"], v["images"], set(v["speedup"])) for v in s["versus_generate"]] == \
        [(1, size.sample_images[0], {"eager"}), (16, size.sample_images[1], {"eager"})]
    assert all(v["seconds"]["generate"] > 0 and v["speedup"]["eager"] > 0 for v in s["versus_generate"])

    rl = r["rl"]  # one GRPO step with the 7b RL switches, in this process
    assert (rl["zero_stage"], rl["precision"], rl["activation_checkpointing"], rl["nproc"]) == (3, "bf16", True, 1)
    assert rl["steps"] == 1 and rl["stopped"] == "done" and rl["samples"] == size.rl_prompts * size.rl_group
    assert rl["samples_per_s"] > 0 and 0 <= rl["reward"] <= 1
    assert rl["kl"] == 0.0  # measured before the step's update: the policy is still its reference, the base
    # an lr-1e-6 Adam step moves nearly every weight by ~1e-6, which only the fp32 master weights hold
    assert rl["lr"] == 1e-6 and rl["weights_moved"] is True and rl["moved_fraction"] > 0.9
    assert 1e-7 < rl["median_abs_delta"] < 1e-5 and rl["max_abs_delta"] < 1e-5

    ev = r["evaluate"]
    assert ev["benchmarks"] == ["shapes_geneval", "shapes_edit", "understanding"] and ev["skipped"] == {}
    assert (ev["device"], ev["dtype"]) == ("cpu", "float32")
    # one item per held-out split (novel, novel_composition); POPE: a positive and 3 negatives per scene
    assert ev["items_per_set"]["edit"] == 2 and ev["items_per_set"]["vqa"] == 2 and ev["items_per_set"]["caption"] == 2
    assert ev["items_per_set"]["pope"] == 8
    assert ev["items"] == sum(ev["items_per_set"].values()) > 5  # every GenEval category once
    assert set(ev["scores"]) == set(smoke.HEADLINE) and all(0 <= v <= 1 for v in ev["scores"].values())

    sv = r["serve"]
    assert sv["ok"] is True and sv["error"] is None and sv["model_tag"].startswith("arm:")
    assert sv["image"] == {"format": "PNG", "size": [size.image_size, size.image_size]}
    assert (sv["device"], sv["dtype"]) == ("cpu", "float32") and sv["latency_seconds"] > 0
    assert sv["eval_labels"] > 0  # the package carries the evaluation just run

    assert set(r["phases_seconds"]) == {"peak", "stand_ins", "pretrain", "resume", "sampling", "rl", "evaluate", "serve"}
    assert r["total_seconds"] >= sum(r["phases_seconds"].values()) - 0.05  # each rounded to 0.01 s
    assert r["environment"]["gpu"] is None and "CPU" in r["note"]
