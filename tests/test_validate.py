"""The Great Expectations suite over the curated store, and the curate/validate entry points."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from arm.config import load_config, parse_overrides
from arm.data.curate import curate
from arm.data.validate import DataValidationError, validate

REPO = Path(__file__).resolve().parents[1]
SHAPES = [{"type": "shapes", "name": "shapes", "n_scenes": 80}]


def overrides(tmp: Path, store: Path, *extra: str) -> list[str]:
    return [f"data.store={store}", f"data.metrics={tmp / 'curate.json'}", "data.sources=" + json.dumps(SHAPES),
            f"validation.output={tmp / 'validation.json'}", *extra]


def cfg_for(tmp: Path, store: Path, *extra: str):
    return load_config(REPO / "params.yaml", preset="micro", overrides=overrides(tmp, store, *extra))


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("validate")
    curate(cfg_for(tmp, tmp / "store"))
    return tmp / "store"


def failed(report: dict) -> set[tuple[str, str | None, str]]:
    return {(r["table"], r["column"], r["expectation"]) for r in report["results"] if not r["success"]}


def test_suite_passes_on_a_fresh_store_and_reports_observations(tmp_path, store):
    cfg = cfg_for(tmp_path, store)
    report = validate(cfg)
    assert report["success"] and report["n_failed"] == 0 and report["n_expectations"] >= 40
    written = json.loads(Path(cfg.validation.output).read_text())
    assert written["success"] and len(written["results"]) == report["n_expectations"]
    kinds = {r["expectation"] for r in written["results"]}
    assert {"expect_table_columns_to_match_set", "expect_column_values_to_be_unique",
            "expect_column_values_to_not_be_null", "expect_column_values_to_be_between",
            "expect_column_values_to_be_in_set", "expect_column_min_to_be_between"} <= kinds
    obs = {(r["table"], r["column"]): r["observed"] for r in written["results"]}
    with duckdb.connect(str(store / "store.duckdb"), read_only=True) as con:
        n_edit = con.execute("SELECT count(*) FROM samples WHERE task = 'edit'").fetchone()[0]
        n = con.execute("SELECT count(*) FROM samples").fetchone()[0]
        n_val = con.execute("SELECT count(*) FROM samples WHERE split = 'val'").fetchone()[0]
    assert obs[("task_summary", "n_edit")] == n_edit
    assert obs[("split_summary", "frac_val")] == pytest.approx(n_val / n)
    assert obs[("samples", "id")]["unexpected_count"] == 0


def test_too_few_samples_of_a_task_fails_with_a_readable_report(tmp_path, store):
    cfg = cfg_for(tmp_path, store, "validation.min_per_task.text=100000")
    with pytest.raises(DataValidationError) as e:
        validate(cfg)
    msg = str(e.value)
    assert "failed 1 of" in msg and "task_summary.n_text: expect_column_min_to_be_between" in msg
    assert "'min_value': 100000" in msg and "observed" in msg
    written = json.loads(Path(cfg.validation.output).read_text())
    assert not written["success"] and failed(written) == {("task_summary", "n_text", "expect_column_min_to_be_between")}


def test_split_proportions_outside_tolerance_fail(tmp_path, store):
    cfg = cfg_for(tmp_path, store, "data.splits.val=0.3", "validation.split_tolerance=0.05")
    with pytest.raises(DataValidationError) as e:
        validate(cfg)
    assert {("split_summary", "frac_val", "expect_column_min_to_be_between"),
            ("split_summary", "frac_train", "expect_column_min_to_be_between")} <= failed(e.value.result)


def test_a_tampered_store_fails_uniqueness_ranges_and_reconciliation(tmp_path, store):
    bad = tmp_path / "bad_store"
    shutil.copytree(store, bad)
    with duckdb.connect(str(bad / "store.duckdb")) as con:
        con.execute("INSERT INTO samples SELECT * FROM samples WHERE task = 'generate' LIMIT 1")  # a duplicate
        con.execute("UPDATE samples SET width = 2 WHERE ord = (SELECT min(ord) FROM samples WHERE task = 'understand')")
        con.execute("UPDATE samples SET split = 'holdout' WHERE ord = (SELECT max(ord) FROM samples)")
        con.execute("INSERT INTO rejections VALUES (10000000, 'shapes', 'shapes:x', 'generate', NULL, 'lost', 'stats')")
        con.execute("DELETE FROM images WHERE shard = 0 AND row = 0")
    with pytest.raises(DataValidationError) as e:
        validate(cfg_for(tmp_path, bad))
    f = failed(e.value.result)
    assert {("samples", "id", "expect_column_values_to_be_unique"),
            ("image_samples", "width", "expect_column_values_to_be_between"),
            ("samples", "split", "expect_column_values_to_be_in_set"),
            ("rejections", "reason", "expect_column_values_to_not_be_null"),
            ("reconcile", "unaccounted", "expect_column_values_to_be_between"),
            ("integrity", "missing_images", "expect_column_max_to_be_between")} <= f
    width = next(r for r in e.value.result["results"] if r["column"] == "width" and not r["success"])
    assert width["observed"]["unexpected_count"] == 1 and width["observed"]["examples"] == [2]


def test_missing_store_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no curated store at .*run `arm curate`"):
        validate(cfg_for(tmp_path, tmp_path / "nowhere"))


@pytest.mark.slow
def test_flows_and_cli_run_the_stages(tmp_path):
    """The Prefect flows (ephemeral, no server) in-process, then `arm validate` failing as a user sees it."""
    from flows.curate import curate_flow
    from flows.validate import validate_flow

    from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS, temporary_settings

    # The ephemeral API server starts in a subprocess; on a busy 2-core machine it needs longer.
    with temporary_settings(updates={PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS: 180}):
        _flows_then_cli(tmp_path, curate_flow, validate_flow)


def _flows_then_cli(tmp_path, curate_flow, validate_flow):

    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey, FlowRunFilter, FlowRunFilterId

    store = tmp_path / "store"
    ov = parse_overrides(overrides(tmp_path, store))
    metrics = curate_flow(params=str(REPO / "params.yaml"), preset="micro", overrides=ov)
    assert metrics["n_kept"] > 0 and (store / "store.duckdb").is_file()
    report = validate_flow(params=str(REPO / "params.yaml"), preset="micro", overrides=ov)
    assert report["success"]
    # a failing suite fails the flow; its failed expectations are the run's table artifact
    state = validate_flow(params=str(REPO / "params.yaml"), preset="micro", return_state=True,
                          overrides={**ov, "validation.min_per_task.edit": 999999})
    assert state.is_failed()
    with get_client(sync_client=True) as client:
        (artifact,) = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["data-validation-failures"])),
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id])))
    (failed,) = json.loads(artifact.data)
    assert failed["column"] == "n_edit" and failed["expectation"] == "expect_column_min_to_be_between"
    assert "1 failed" in artifact.description

    cmd = [sys.executable, "-m", "arm.cli", "validate", "--params", str(REPO / "params.yaml"), "--preset", "micro"]
    for o in overrides(tmp_path, store, "validation.min_per_task.edit=999999"):
        cmd += ["--set", o]
    env = {**os.environ, "COLUMNS": "200"}
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert res.returncode == 1, res.stderr[-2000:]
    assert "n_edit" in res.stderr and "column_min_to_be_between" in res.stderr
    assert "1 of" in res.stderr and "expectations failed" in res.stderr
    assert json.loads((tmp_path / "validation.json").read_text())["success"] is False
