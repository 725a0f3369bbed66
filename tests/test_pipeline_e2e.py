"""The micro pipeline end to end: a Prefect deployment run by a process worker, DVC skipping, reproducibility."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

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
    """The `retrain` deployment from prefect.yaml, run on the micro preset by a process worker."""
    repo = copy_repo(tmp_path_factory.mktemp("deployed") / "repo")
    env = prefect_server
    for pool in ("cpu", "gpu"):
        run(["prefect", "work-pool", "create", pool, "--type", "process"], repo, env)
    out = run(["prefect", "--no-prompt", "deploy", "--all"], repo, env)
    assert "retrain" in out and "pretrain-7b" in out and "evaluate" in out
    out = run(["prefect", "deployment", "run", "pipeline/retrain", "--params", json.dumps({"preset": "micro"})], repo, env)
    flow_run_id = re.search(r"UUID:\s*([0-9a-f-]{36})", out).group(1)
    run(["prefect", "worker", "start", "--pool", "cpu", "--run-once", "--install-policy", "never"], repo, env,
        timeout=1500)
    state = run(["prefect", "flow-run", "inspect", flow_run_id], repo, env)
    return repo, state


def test_retrain_deployment_completes_the_micro_pipeline(deployed_run):
    repo, state = deployed_run
    assert "COMPLETED" in state
    gate = json.loads((repo / "metrics" / "gate.json").read_text())
    assert "passed" in gate
    for path in ("data/curated/store.duckdb", "models/tokenizer", "models/arm-base/config.json",
                 "models/arm-rl/config.json", "metrics/eval_arm-rl.json"):
        assert (repo / path).exists(), path


def test_dvc_repro_right_after_is_up_to_date(deployed_run):
    repo, _ = deployed_run
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
    repo, _ = deployed_run
    assert _stale_after(repo, "rl", "lr", 0.123) == {"rl"}
    assert _stale_after(repo, "gate", "thresholds", {"shapes_geneval.overall": 0.9}) == {"gate"}
    assert _stale_after(repo, "tokenizer", "dropout", 0.3) == {"train_tokenizer"}
    assert json.loads(run(["dvc", "status", "--json"], repo)) == {}  # restored: nothing stale


def test_dvc_plots_show_renders_the_loss_curves(deployed_run, tmp_path):
    repo, _ = deployed_run
    run(["dvc", "plots", "show", "-o", str(tmp_path / "plots")], repo)
    page = (tmp_path / "plots" / "index.html").read_text()
    for plot in ("tokenizer_loss", "pretrain_loss", "pretrain_val_loss", "rl_reward", "rl_kl"):  # dvc.yaml `plots:`
        assert plot in page, plot


def test_same_seed_gives_identical_tokenizer_and_model(deployed_run, tmp_path):
    repo, _ = deployed_run
    again = copy_repo(tmp_path / "again")
    select_preset(again / "params.yaml", "micro")
    run(["dvc", "repro", "pretrain"], again, tool_env(), timeout=1200)
    first, second = model_hashes(repo), model_hashes(again)
    assert first and first == second


def test_report_is_built_from_the_run(deployed_run):
    repo, _ = deployed_run
    run(["arm", "report"], repo)
    page = (repo / "reports" / "latest" / "index.html").read_text()
    assert "pretrain_loss" in page and "eval_arm-rl.json" in page and "<img" in page


def tree_hashes(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): sha256_file(p) for p in sorted(root.rglob("*")) if p.is_file()}


def test_dvc_push_then_pull_into_a_fresh_clone_restores_artifacts(deployed_run, s3_server, tmp_path, monkeypatch):
    """A real S3 server (SeaweedFS on 127.0.0.1) as the DVC remote; byte-for-byte restore."""
    repo, _ = deployed_run
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
