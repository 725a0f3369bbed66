"""The micro pipeline end to end: a Prefect deployment run by a process worker (one flow run, stage
subflows, artifacts, arm.* logs), DVC skipping, reproducibility."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from uuid import UUID

import pytest

from arm.io import sha256_file
from arm.orchestration.stages import select_preset
from repo_copy import copy_repo, run, tool_env

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("pipeline")]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory):
    home = tmp_path_factory.mktemp("prefect-server")
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = tool_env(PREFECT_HOME=str(home), PREFECT_API_URL=api, PREFECT_SERVER_ANALYTICS_ENABLED="false")
    log = open(home / "server.log", "w")
    proc = subprocess.Popen(["prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                            env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 180
    while True:
        try:
            with urllib.request.urlopen(f"{api}/health", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            raise RuntimeError(f"prefect server did not start:\n{(home / 'server.log').read_text()[-3000:]}")
        time.sleep(1)
    yield env
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


def model_hashes(repo: Path) -> dict[str, str]:
    files = sorted((repo / "models" / "tokenizer").rglob("*.safetensors")) + \
        sorted((repo / "models" / "arm-base").rglob("*.safetensors"))
    return {p.relative_to(repo).as_posix(): sha256_file(p) for p in files}


@pytest.fixture(scope="module")
def deployed_run(tmp_path_factory, prefect_server):
    """The `retrain` deployment from prefect.yaml, run on the micro preset by a process worker:
    (repo copy, `prefect flow-run inspect` output, flow run id, the worker's output)."""
    repo = copy_repo(tmp_path_factory.mktemp("deployed") / "repo")
    env = prefect_server
    for pool in ("cpu", "gpu"):
        run(["prefect", "work-pool", "create", pool, "--type", "process"], repo, env)
    out = run(["prefect", "--no-prompt", "deploy", "--all"], repo, env)
    assert "retrain" in out and "pretrain-7b" in out and "evaluate" in out
    out = run(["prefect", "deployment", "run", "pipeline/retrain", "--params", json.dumps({"preset": "micro"})], repo, env)
    flow_run_id = re.search(r"UUID:\s*([0-9a-f-]{36})", out).group(1)
    worker = subprocess.run(["prefect", "worker", "start", "--pool", "cpu", "--run-once", "--install-policy", "never"],
                            cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=1500)
    assert worker.returncode == 0, worker.stdout[-4000:]
    state = run(["prefect", "flow-run", "inspect", flow_run_id], repo, env)
    return repo, state, UUID(flow_run_id), worker.stdout


def test_retrain_deployment_completes_the_micro_pipeline(deployed_run):
    repo, state, _, _ = deployed_run
    assert "COMPLETED" in state
    gate = json.loads((repo / "metrics" / "gate.json").read_text())
    assert "passed" in gate
    for path in ("data/curated/store.duckdb", "models/tokenizer", "models/arm-base/config.json",
                 "models/arm-rl/config.json", "metrics/eval_arm-rl.json"):
        assert (repo / path).exists(), path


def test_one_flow_run_with_stage_subflows_artifacts_and_arm_logs(deployed_run, prefect_server):
    """Every stage is a subflow of the pipeline's run on the worker's API (no temporary servers), the
    results are artifacts of those runs, and the arm.* module loggers reach the run logs."""
    from prefect import get_client
    from prefect.client.schemas.filters import (FlowRunFilter, FlowRunFilterId, FlowRunFilterParentFlowRunId,
                                                LogFilter, LogFilterFlowRunId)
    from prefect.settings import PREFECT_API_URL, temporary_settings

    repo, _, flow_run_id, worker_output = deployed_run
    assert "temporary server" not in worker_output
    with temporary_settings(updates={PREFECT_API_URL: prefect_server["PREFECT_API_URL"]}), \
            get_client(sync_client=True) as client:
        children = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[flow_run_id])))
        flow_names = {child.id: client.read_flow(child.flow_id).name for child in children}
        artifacts = {a.key: a for a in client.read_artifacts(flow_run_filter=FlowRunFilter(
            id=FlowRunFilterId(any_=[flow_run_id, *flow_names])))}
        (rl_run,) = [run_id for run_id, name in flow_names.items() if name == "rl"]
        rl_logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[rl_run])))
    assert sorted(flow_names.values()) == sorted(["curate", "validate", "train_tokenizer", "tokenize", "eval_prompts",
                                                  "pretrain", "rl", "evaluate", "evaluate", "gate", "package"])
    assert {"curation-counts", "data-validation-failures", "eval-scores-arm-base", "eval-scores-arm-rl",
            "eval-report-arm-base", "eval-report-arm-rl", "gate-decision", "pipeline-stages"} <= set(artifacts)
    curate = json.loads((repo / "metrics" / "curate.json").read_text())
    assert json.loads(artifacts["curation-counts"].data)[-1] == {
        "source": "total", "in": curate["n_in"], "kept": curate["n_kept"], "rejected": curate["n_rejected"],
        "rejected by reason": ", ".join(f"{k}: {v}" for k, v in sorted(curate["rejected_by_reason"].items())) or "-"}
    assert json.loads(artifacts["data-validation-failures"].data) == []
    gate = json.loads((repo / "metrics" / "gate.json").read_text())
    assert artifacts["gate-decision"].data.startswith(f"## arm-rl: {'PASSED' if gate['passed'] else 'REJECTED'}")
    report = (repo / "reports" / "eval_arm-rl" / "index.html").resolve()
    assert report.is_file() and artifacts["eval-report-arm-rl"].data == f"[evaluation report of arm-rl]({report.as_uri()})"
    assert json.loads(artifacts["pipeline-stages"].data) == [
        {"stage": stage, "state": "ran"} for stage in ("curate", "validate", "train_tokenizer", "tokenize",
                                                       "eval_prompts", "pretrain", "rl", "evaluate_base",
                                                       "evaluate_rl", "gate", "package")]
    assert any(log.name == "arm.rl" and "reward" in log.message for log in rl_logs)


def test_dvc_repro_right_after_is_up_to_date(deployed_run):
    repo, *_ = deployed_run
    out = run(["dvc", "repro"], repo)
    assert "didn't change, skipping" in out or "up to date" in out.lower()
    assert "Running stage" not in out


def _stale_after(repo: Path, section: str, key: str, value) -> set[str]:
    """Stages `dvc status` calls changed after setting params.yaml section.key; then restored."""
    import yaml

    params = repo / "params.yaml"
    original = params.read_text()
    changed = yaml.safe_load(original)
    changed[section][key] = value
    try:
        params.write_text(yaml.safe_dump(changed, sort_keys=False))
        return set(json.loads(run(["dvc", "status", "--json"], repo)))
    finally:
        params.write_text(original)


def test_changing_one_param_makes_only_its_stages_stale(deployed_run):
    repo, *_ = deployed_run
    assert _stale_after(repo, "rl", "lr", 0.123) == {"rl"}
    assert _stale_after(repo, "gate", "thresholds", {"shapes_geneval.overall": 0.9}) == {"gate"}
    assert _stale_after(repo, "tokenizer", "dropout", 0.3) == {"train_tokenizer"}
    assert json.loads(run(["dvc", "status", "--json"], repo)) == {}  # restored: nothing stale


def test_dvc_plots_show_renders_the_loss_curves(deployed_run, tmp_path):
    repo, *_ = deployed_run
    run(["dvc", "plots", "show", "-o", str(tmp_path / "plots")], repo)
    page = (tmp_path / "plots" / "index.html").read_text()
    for plot in ("tokenizer_loss", "pretrain_loss", "pretrain_val_loss", "rl_reward", "rl_kl"):  # dvc.yaml `plots:`
        assert plot in page, plot


def test_same_seed_gives_identical_tokenizer_and_model(deployed_run, tmp_path):
    repo, *_ = deployed_run
    again = copy_repo(tmp_path / "again")
    select_preset(again / "params.yaml", "micro")
    run(["dvc", "repro", "pretrain"], again, tool_env(), timeout=1200)
    first, second = model_hashes(repo), model_hashes(again)
    assert first and first == second


def test_report_is_built_from_the_run(deployed_run):
    repo, *_ = deployed_run
    run(["arm", "report"], repo)
    page = (repo / "reports" / "latest" / "index.html").read_text()
    headline = page[page.index('<table id="headline">'):page.index("</table>", page.index('<table id="headline">'))]
    assert "<th>arm-base</th>" in headline and "<th>arm-rl (candidate)</th>" in headline  # the gate ran on arm-rl
    assert "<td>shapes_geneval.overall</td>" in headline
    for curve in ("tokenizer", "pretrain", "rl"):  # the stages' dvclive curves, drawn and embedded
        assert re.search(f'<img src="data:image/png;base64,[^"]+" alt="{curve}">', page), curve
    assert "metrics/eval_arm-rl.json" in page[page.index('id="raw"'):]


def tree_hashes(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): sha256_file(p) for p in sorted(root.rglob("*")) if p.is_file()}


def test_dvc_push_then_pull_into_a_fresh_clone_restores_artifacts(deployed_run, s3_server, tmp_path, monkeypatch):
    """A real S3 server (SeaweedFS on 127.0.0.1) as the DVC remote; byte-for-byte restore."""
    repo, *_ = deployed_run
    s3_server.use(monkeypatch)
    env = tool_env()
    bucket = s3_server.new_bucket("dvc")
    run(["dvc", "remote", "add", "-d", "store", f"s3://{bucket}/dvcstore"], repo, env)
    run(["dvc", "remote", "modify", "store", "endpointurl", s3_server.endpoint_url], repo, env)
    run(["dvc", "push"], repo, env)
    run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "add", "-A"], repo, env)
    run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "run outputs"], repo, env)

    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(repo), str(clone)], tmp_path, env)
    assert not (clone / "models" / "arm-base").exists()
    run(["dvc", "pull"], clone, env)
    for out in ("data/curated", "data/tokens", "models/tokenizer", "models/arm-base", "models/arm-rl"):
        original = tree_hashes(repo / out)
        assert original and tree_hashes(clone / out) == original, out
    assert "up to date" in run(["dvc", "status"], clone, env).lower()
