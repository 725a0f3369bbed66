"""`dvc push` to a real S3 server, then `dvc pull` into a fresh clone restores artifacts byte for byte."""

from __future__ import annotations

import pytest

from arm.io import sha256_file
from arm.orchestration.stages import select_preset
from repo_copy import commit_all, run, tool_env


def tree_hashes(root):
    return {p.relative_to(root).as_posix(): sha256_file(p) for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.slow
@pytest.mark.xdist_group("s3")
def test_dvc_push_then_pull_into_fresh_clone(repo_copy, s3_server, tmp_path, monkeypatch):
    s3_server.use(monkeypatch)
    env = tool_env()
    select_preset(repo_copy / "params.yaml", "micro")
    run(["dvc", "repro", "validate"], repo_copy, env)
    bucket = s3_server.new_bucket("dvc")
    run(["dvc", "remote", "add", "-d", "store", f"s3://{bucket}/dvcstore"], repo_copy, env)
    run(["dvc", "remote", "modify", "store", "endpointurl", s3_server.endpoint_url], repo_copy, env)
    run(["dvc", "push"], repo_copy, env)
    commit_all(repo_copy, "pipeline outputs")
    assert not (repo_copy / "data" / "curated" / "store.duckdb").is_symlink()

    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(repo_copy), str(clone)], tmp_path, env)
    assert not (clone / "data" / "curated").exists()
    run(["dvc", "pull"], clone, env)
    original = tree_hashes(repo_copy / "data" / "curated")
    assert original and tree_hashes(clone / "data" / "curated") == original
    # and the restored workspace is what dvc.lock records: nothing to re-run
    assert "up to date" in run(["dvc", "status"], clone, env).lower()
