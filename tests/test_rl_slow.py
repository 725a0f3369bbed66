"""A short real GRPO run climbs a toy reward, and `arm rl` runs end to end through its Prefect flow."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from arm.rl import rewards
from arm.config import load_config
from test_rl import REPO, build_model_dir, rl_config  # shared builders


@pytest.fixture
def toy_reward():
    @rewards.register("toy_empty_cells")
    def empty_cells(rollouts, ctx):
        """Share of image codes that name the empty cell: trivially learnable by the policy alone."""
        return [float((r.codes == 0).float().mean()) for r in rollouts]

    yield "toy_empty_cells"
    rewards.REWARDS.pop("toy_empty_cells", None)


@pytest.mark.slow
def test_grpo_climbs_a_toy_reward(tmp_path, toy_reward):
    from arm.rl.trainer import train_rl

    world = load_config(REPO / "params.yaml", preset="micro").world
    base = build_model_dir(tmp_path / "arm-base", world)
    cfg = rl_config(base, tmp_path, "rl.prompts_per_step=4", "rl.group_size=4", "rl.minibatch_size=16",
                    "rl.lr=0.01", "rl.beta=0.01", "rl.steps=20", "rl.tasks=[t2i]", f"rl.rewards.t2i={{{toy_reward}: 1.0}}")
    m = train_rl(cfg, progress=False)
    first, last = m["rewards"]["reward"]["first"], m["rewards"]["reward"]["last"]
    assert last > first + 0.2, (first, last)
    assert m["kl_final"] > 0


@pytest.mark.slow
def test_cli_runs_the_flow(tmp_path, monkeypatch):
    from arm.cli import app

    world = load_config(REPO / "params.yaml", preset="micro").world
    base = build_model_dir(tmp_path / "arm-base", world)
    monkeypatch.chdir(REPO)
    args = ["rl", "--preset", "micro"]
    for item in (f"rl.base={base}", f"rl.output={tmp_path}/arm-rl", f"rl.checkpoints={tmp_path}/ck",
                 f"rl.metrics={tmp_path}/rl.json", f"rl.plot={tmp_path}/curve", "rl.rewards.t2i.alignment=0"):
        args += ["--set", item]
    from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS, temporary_settings

    # the ephemeral API server starts in a subprocess; on a busy 2-core machine it needs longer
    with temporary_settings(updates={PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS: 180}):
        res = CliRunner().invoke(app, [*args, "--stop-after", "1"])
        assert res.exit_code == 0, res.output
        assert not (tmp_path / "arm-rl").exists()
        res = CliRunner().invoke(app, args)
        assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "rl.json").read_text())["steps"] == 3
    assert (tmp_path / "arm-rl" / "manifest.json").is_file()
    # a bad override exits 2 before anything runs; a missing base exits 1 naming it
    assert CliRunner().invoke(app, [*args, "--set", "rl.group_size=1"]).exit_code == 2
    res = CliRunner().invoke(app, [*args, "--set", f"rl.base={tmp_path}/nope"])
    assert res.exit_code == 1 and "nope" in res.output


@pytest.mark.slow
def test_claims_experiment_end_to_end(tmp_path):
    """Two seeds x two task sets on a toy oracle model: every run is trained, evaluated and tabulated."""
    from arm.rl.claims import render_report, run_claims

    world = load_config(REPO / "params.yaml", preset="micro").world
    base = build_model_dir(tmp_path / "arm-base", world)
    overrides = [f"rl.base={base}", f"rl.checkpoints={tmp_path}/ck", "rl.rewards.t2i.alignment=0", "rl.steps=1",
                 f"eval.prompts.dir={tmp_path}/prompts", f"eval.metrics_dir={tmp_path}/metrics",
                 f"eval.reports_dir={tmp_path}/reports"]
    def claims():
        return run_claims(REPO / "params.yaml", "micro", overrides, seeds=[0, 1], task_sets=["both", "edit"],
                          out_root=str(tmp_path / "claims"), benchmarks=["shapes_geneval", "shapes_edit"],
                          metrics_out=str(tmp_path / "rl_claims.json"), report_out=str(tmp_path / "rl_claims.md"),
                          plots_dir=str(tmp_path / "plots"), eval_seeds=[0, 1])

    result = claims()
    assert set(result["runs"]) == {"both", "edit"} and set(result["runs"]["edit"]) == {"0", "1"}
    assert set(result["runs"]["edit"]["1"]["scores"]) == {"0", "1"}  # every RL model at every eval seed
    for split in ("novel", "novel_composition"):
        for judge, prefix in (("judge", ""), ("oracle", "oracle/")):
            row = result["table"]["both"][f"shapes_geneval.{prefix}{split}/overall"]
            assert (row["split"], row["judge"]) == (split, judge)
            assert row["rl"]["n"] == 4  # 2 RL seeds x 2 eval seeds
            assert row["delta"]["mean"] == pytest.approx(row["rl"]["mean"] - row["base"]["mean"])
            lo, hi = row["delta_interval"]
            assert lo <= row["delta"]["mean"] <= hi
    assert "shapes_edit.novel/success" in result["table"]["both"]
    assert "a_rl_improves_targets" in result["claims"] and "rl_on_edit" in result["claims"]["b_cross_task_synergy"]
    assert (tmp_path / "claims" / "edit-s1" / "manifest.json").is_file()
    assert (tmp_path / "rl_claims.md").read_text() == render_report(result)
    assert "--set rl.steps=1" in render_report(result)  # the report names every override it ran with
    assert json.loads((tmp_path / "rl_claims.json").read_text())["seeds"] == [0, 1]
    # run again (a resumed experiment): finished runs are reused, not re-exported and re-evaluated
    weights = tmp_path / "claims" / "edit-s1" / "model.safetensors"
    before = weights.stat().st_mtime_ns
    assert claims()["table"] == result["table"]
    assert weights.stat().st_mtime_ns == before
