"""Prefect-native runs: typed flow parameters, retries and timeouts from the config, artifacts,
arm.* logs in the run's logs, and pipeline stages as subflows of one run recorded like `dvc repro`."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from uuid import UUID

import pytest
import yaml
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (ArtifactFilter, ArtifactFilterKey, FlowRunFilter, FlowRunFilterId,
                                            FlowRunFilterParentFlowRunId)

from arm.config import ConfigError, load_config, override_args, parse_overrides
from arm.orchestration.artifacts import artifact_key, curation_rows, gate_markdown, validation_failures
from repo_copy import REPO, copy_repo, run, tool_env

PARAMS = REPO / "params.yaml"


# ----------------------------------------------------------------------------- typed parameters


def test_a_mapping_of_overrides_equals_the_command_line_items():
    items = ["rl.lr=0.5", "rl.tasks=[edit]", "pretrain.remote=s3://bucket/run", "world.holdout.salt='yes'"]
    mapping = {"rl.lr": 0.5, "rl.tasks": ["edit"], "pretrain.remote": "s3://bucket/run", "world.holdout.salt": "yes"}
    assert parse_overrides(items) == mapping
    assert load_config(PARAMS, "micro", mapping) == load_config(PARAMS, "micro", items)
    assert load_config(PARAMS, "micro", mapping).rl.tasks == ["edit"]
    # a key given again takes its last value, after whatever was set in between
    assert parse_overrides(["a.y=2", "a={x: 1}", "a.y=3"]) == {"a": {"x": 1}, "a.y": 3}
    with pytest.raises(ConfigError, match="rl.lr0.5"):
        parse_overrides(["rl.lr0.5"])
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(PARAMS, "micro", "rl.lr=0.5")
    with pytest.raises(ConfigError, match="rl.lr"):
        load_config(PARAMS, "micro", {"rl.lr": "fast"})


def test_override_args_give_back_the_same_values_on_a_command_line():
    mapping = {"pretrain.lr": 1e-5, "s": "s3://x y", "yes_string": "yes", "none": None, "nested": {"k": [1, "2", True]},
               "empty": "", "colon": "a: b", "int_string": "1", "float": 2.0}
    assert parse_overrides(override_args(mapping)) == mapping
    assert override_args(None) == []


def test_flow_parameters_are_typed_for_the_ui_form():
    from prefect.utilities.callables import parameter_schema

    from arm.orchestration.stages import PIPELINE_STAGES
    from flows.pipeline import pipeline_flow
    from flows.pretrain import pretrain_flow

    overrides = parameter_schema(pretrain_flow).model_dump()["properties"]["overrides"]
    assert {"type": "object", "additionalProperties": True} in overrides["anyOf"]
    until = parameter_schema(pipeline_flow).model_dump()["properties"]["until"]
    assert until["anyOf"][0]["enum"] == list(PIPELINE_STAGES)


# ----------------------------------------------------------------------------- artifacts (rows)


def test_artifact_rows_and_keys():
    metrics = {"by_source": {"shapes": {"in": 10, "kept": 7, "rejected": 3, "rejected_by_reason": {"duplicate": 2, "blank_image": 1}},
                             "fmnist": {"in": 5, "kept": 5, "rejected": 0, "rejected_by_reason": {}}},
               "n_in": 15, "n_kept": 12, "n_rejected": 3, "rejected_by_reason": {"duplicate": 2, "blank_image": 1}}
    assert curation_rows(metrics) == [
        {"source": "fmnist", "in": 5, "kept": 5, "rejected": 0, "rejected by reason": "-"},
        {"source": "shapes", "in": 10, "kept": 7, "rejected": 3, "rejected by reason": "blank_image: 1, duplicate: 2"},
        {"source": "total", "in": 15, "kept": 12, "rejected": 3, "rejected by reason": "blank_image: 1, duplicate: 2"}]
    result = {"results": [{"table": "samples", "column": "id", "expectation": "expect_column_values_to_be_unique",
                           "kwargs": {}, "observed": {"unexpected_count": 2}, "success": False},
                          {"table": "samples", "column": None, "expectation": "expect_table_row_count_to_be_between",
                           "kwargs": {"min_value": 1}, "observed": 9, "success": True}]}
    assert validation_failures(result) == [{"table": "samples", "column": "id", "expectation": "expect_column_values_to_be_unique",
                                            "kwargs": "{}", "observed": '{"unexpected_count": 2}'}]
    gate = {"candidate": "arm-rl", "passed": False, "promoted": "arm-v1", "checks": [
        {"kind": "threshold", "metric": "shapes_geneval.overall", "value": 0.05, "limit": 0.2, "reference": None,
         "passed": False, "note": ""},
        {"kind": "regression", "metric": "understanding.vqa_accuracy", "value": 0.6, "limit": 0.58, "reference": 0.61,
         "passed": True, "note": ""}]}
    assert gate_markdown(gate).splitlines() == [
        "## arm-rl: REJECTED", "", "Compared with the promoted model `arm-v1`.", "",
        "- **FAIL** threshold `shapes_geneval.overall`: 0.05 (limit 0.2)",
        "- pass regression `understanding.vqa_accuracy`: 0.6 (limit 0.58, promoted 0.61)"]
    assert artifact_key("eval-scores", "ARM_rl.v2") == "eval-scores-arm-rl-v2"
    with pytest.raises(ValueError, match="empty"):
        artifact_key("__")


# ----------------------------------------------------------------------------- runs on the API


def _task_runs(flow_run_id: UUID):
    with get_client(sync_client=True) as client:
        return client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))


def _artifacts(key: str, flow_run_id: UUID):
    with get_client(sync_client=True) as client:
        return client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])),
                                     flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))


def test_resumable_stage_tasks_get_retries_and_a_timeout_from_the_config(tmp_path):
    from flows.tokenize import tokenize_flow
    from flows.train_tokenizer import train_tokenizer_flow

    missing = {"data.store": str(tmp_path / "no-store"), "tokenizer.output": str(tmp_path / "tok"),
               "tokenizer.checkpoint_dir": str(tmp_path / "ckpt")}
    state = train_tokenizer_flow(str(PARAMS), "micro", {**missing, "orchestration.train_tokenizer.retries": 2,
                                                        "orchestration.train_tokenizer.retry_delay_seconds": 0},
                                 return_state=True)
    assert state.is_failed()
    (task_run,) = _task_runs(state.state_details.flow_run_id)
    assert task_run.name.startswith("train_tokenizer") and task_run.run_count == 3  # the first attempt and 2 retries
    assert task_run.empirical_policy.retries == 2

    state = tokenize_flow(str(PARAMS), "micro", {**missing, "orchestration.tokenize.retries": 0,
                                                 "orchestration.tokenize.timeout_seconds": 0.001}, return_state=True)
    (task_run,) = _task_runs(state.state_details.flow_run_id)
    assert task_run.state.name == "TimedOut" and task_run.run_count == 1


def test_gate_flow_publishes_its_decision(tmp_path):
    from flows.gate import gate_flow

    candidate = tmp_path / "eval_cand.json"
    candidate.write_text(json.dumps({"model": "cand", "prompts": {"manifest_sha256": "m"}, "model_dir": None,
                                     "scores": {"shapes_geneval": {"overall": 0.1}, "understanding": {"vqa_accuracy": 0.9}},
                                     "floor": {"shapes_geneval": {"overall": 0.0}}}))
    overrides = {"gate.output": str(tmp_path / "gate.json"), "gate.promoted": str(tmp_path / "promoted.json"),
                 "gate.thresholds": {"shapes_geneval.overall": 0.5, "understanding.vqa_accuracy": 0.5},
                 "gate.min_over_floor": {}, "gate.max_regression": {}}
    state = gate_flow(str(candidate), str(PARAMS), "micro", overrides, return_state=True)
    assert state.is_failed()
    (artifact,) = _artifacts("gate-decision", state.state_details.flow_run_id)
    assert artifact.type == "markdown" and artifact.data.startswith("## cand: REJECTED")
    assert "- **FAIL** threshold `shapes_geneval.overall`: 0.1 (limit 0.5)" in artifact.data
    assert "- pass threshold `understanding.vqa_accuracy`: 0.9 (limit 0.5)" in artifact.data


def test_arm_module_logs_reach_the_flow_run_logs(tmp_path):
    """prefect.toml (read in the repo) attaches the API handler to arm.*; importing flows sets their level."""
    code = """
import json, logging
import flows
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
from prefect.logging.handlers import APILogHandler

@flow
def probe():
    logging.getLogger("arm.rl").info("probe step %d", 7)

state = probe(return_state=True)
APILogHandler().flush()  # send the batched logs before reading them back
with get_client(sync_client=True) as client:
    logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[state.state_details.flow_run_id])))
print(json.dumps([[log.name, log.message] for log in logs]))
"""
    env = tool_env(PREFECT_HOME=str(tmp_path / "prefect"))
    env.pop("PREFECT_LOGGING_EXTRA_LOGGERS", None)
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    logs = json.loads(proc.stdout.strip().splitlines()[-1])
    assert ["arm.rl", "probe step 7"] in logs


@pytest.mark.slow
def test_a_stale_stage_runs_as_a_subflow_and_is_recorded_as_dvc_repro_records_it(tmp_path, monkeypatch):
    from arm.orchestration.stages import select_preset, stage_is_stale
    from flows.pipeline import run_stage

    ours = copy_repo(tmp_path / "ours")
    select_preset(ours / "params.yaml", "micro")
    theirs = tmp_path / "theirs"
    shutil.copytree(ours, theirs)

    @flow
    def one_stage(root: str) -> str:
        return run_stage(Path(root), "eval_prompts")

    monkeypatch.chdir(ours)  # what pipeline_flow does for its stages
    state = one_stage(str(ours), return_state=True)
    assert state.result() == "ran"
    assert not stage_is_stale(ours, "eval_prompts")
    run(["dvc", "repro", "--single-item", "eval_prompts"], theirs, tool_env(), timeout=900)
    lock = {root: yaml.safe_load((root / "dvc.lock").read_text())["stages"]["eval_prompts"] for root in (ours, theirs)}
    assert lock[ours] == lock[theirs]  # same command, deps, params and output hashes

    parent = state.state_details.flow_run_id
    with get_client(sync_client=True) as client:
        children = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[parent])))
    assert len(children) == 1  # linked to this run (through its task run), on the same API
    with get_client(sync_client=True) as client:
        assert client.read_flow(children[0].flow_id).name == "eval_prompts"

    again = one_stage(str(ours), return_state=True)
    assert again.result() == "skipped"
