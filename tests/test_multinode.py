"""Multi-node pretraining without a shared disk: the run store mirror (arm.train.remote), torchrun's
c10d rendezvous arguments, the Prefect fan-out's pieces, and two "nodes" on 127.0.0.1 (separate
working dirs that share only a SeaweedFS server) training, checkpointing and resuming through S3."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import torch
from fsspec.implementations.local import LocalFileSystem
from safetensors.torch import load

from arm.curves import read_curve
from arm.train.dist import DistEnv
from arm.train.remote import RemoteError, RunMirror, writer_rank
from s3_servers import free_ports
from tests.conftest import REPO

TAG_FILES = ["mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_optim_states.pt",
             "zero_pp_rank_1_mp_rank_00_optim_states.pt", "rng_rank0.pt", "rng_rank1.pt",
             "data_rank0.json", "data_rank1.json"]
RANK0 = DistEnv(rank=0, world_size=2, local_rank=0)


class RecordingFS(LocalFileSystem):
    """A local store that logs every write and can fail on chosen file names (a flaky network)."""

    cachable = False  # fsspec would hand every test the same instance, log and faults included

    def __init__(self, fail_on: tuple[str, ...] = ()):
        super().__init__(auto_mkdir=True)
        self.ops: list[tuple[str, str]] = []
        self.fail_on = fail_on

    def put_file(self, lpath, rpath, **kw):
        if any(rpath.endswith(n) for n in self.fail_on):
            raise ConnectionError(f"injected failure uploading {rpath}")
        self.ops.append(("put", rpath))
        return super().put_file(lpath, rpath, **kw)

    def get_file(self, rpath, lpath, **kw):
        self.ops.append(("get", rpath))
        return super().get_file(rpath, lpath, **kw)

    def mv(self, path1, path2, **kw):
        self.ops.append(("mv", path2))
        return super().mv(path1, path2, **kw)


def _tag_dir(run_dir: Path, tag: str) -> Path:
    d = run_dir / tag
    d.mkdir(parents=True)
    for n in TAG_FILES:
        (d / n).write_bytes(f"{tag}/{n}".encode())
    return d


def _mirror(tmp_path, fs=None) -> RunMirror:
    return RunMirror(fs or RecordingFS(), str(tmp_path / "store"), "run1", "store")


def test_writer_rank_follows_deepspeed_names():
    assert [writer_rank(n) for n in TAG_FILES] == [0, 0, 1, 0, 1, 0, 1]
    assert writer_rank("bf16_zero_pp_rank_12_mp_rank_00_optim_states.pt") == 12
    assert writer_rank("zero_pp_rank_3_mp_rank_00_model_states.pt") == 3  # ZeRO-3 weights


def test_each_rank_uploads_its_files_and_latest_goes_last(tmp_path):
    m = _mirror(tmp_path)
    _tag_dir(tmp_path / "run", "step00000003")
    m.push_checkpoint(tmp_path / "run", "step00000003", RANK0, keep=2)
    root = f"{tmp_path}/store/checkpoints/run1"
    puts = [p for op, p in m.fs.ops if op == "put"]
    # rank 0 uploads its own files and the shared one, never rank 1's
    assert sorted(Path(p).name for p in puts) == sorted(n for n in TAG_FILES if writer_rank(n) == 0)
    assert m.fs.ops[-1] == ("mv", f"{root}/latest")  # the marker after every file of the tag
    assert m.latest() == "step00000003"
    # rank 1 (another node) adds its own files; it never writes `latest`
    m.fs.ops.clear()
    m.push_checkpoint(tmp_path / "run", "step00000003", DistEnv(1, 2, 0), keep=2)
    assert sorted(Path(p).name for op, p in m.fs.ops) == ["data_rank1.json", "rng_rank1.pt",
                                                         "zero_pp_rank_1_mp_rank_00_optim_states.pt"]
    assert sorted(p.name for p in Path(root, "step00000003").iterdir()) == sorted(TAG_FILES)


def test_failed_upload_leaves_the_previous_checkpoint_in_charge(tmp_path):
    m = _mirror(tmp_path)
    _tag_dir(tmp_path / "run", "step00000003")
    m.push_checkpoint(tmp_path / "run", "step00000003", RANK0, keep=1)
    _tag_dir(tmp_path / "run", "step00000006")
    m.fs.fail_on = ("zero_pp_rank_0_mp_rank_00_optim_states.pt",)
    with pytest.raises(RemoteError, match=r"upload of checkpoint step00000006 .*ConnectionError: injected"):
        m.push_checkpoint(tmp_path / "run", "step00000006", RANK0, keep=1)
    assert m.latest() == "step00000003"  # never names the half-uploaded tag
    assert m.tags() == ["step00000003", "step00000006"]  # and nothing was pruned


def test_store_keeps_the_newest_checkpoints(tmp_path):
    m = _mirror(tmp_path)
    for step in (3, 6, 9):
        tag = f"step{step:08d}"
        _tag_dir(tmp_path / "run", tag)
        m.push_checkpoint(tmp_path / "run", tag, RANK0, keep=2)
    assert m.tags() == ["step00000006", "step00000009"] and m.latest() == "step00000009"


def test_pull_takes_the_stores_latest_and_only_this_ranks_files(tmp_path):
    m = _mirror(tmp_path)
    _tag_dir(tmp_path / "node0", "step00000003")
    m.push_checkpoint(tmp_path / "node0", "step00000003", RANK0, keep=2)
    m.push_checkpoint(tmp_path / "node0", "step00000003", DistEnv(1, 2, 0), keep=2)
    # node 1's disk holds a newer tag that was never published: the store decides
    (tmp_path / "node1" / "step00000006").mkdir(parents=True)
    (tmp_path / "node1" / "latest").write_text("step00000006")
    m.fs.ops.clear()
    assert m.pull_checkpoint(tmp_path / "node1", DistEnv(1, 2, 0)) == "step00000003"
    got = tmp_path / "node1" / "step00000003"
    # its own rank's files plus the shared one (first rank of its node); none of rank 0's
    assert sorted(p.name for p in got.iterdir()) == \
        ["data_rank1.json", "mp_rank_00_model_states.pt", "rng_rank1.pt", "zero_pp_rank_1_mp_rank_00_optim_states.pt"]
    assert (got / "rng_rank1.pt").read_bytes() == b"step00000003/rng_rank1.pt"
    # a second rank on the same node fetches only its own files; present ones are not fetched again
    m.fs.ops.clear()
    m.pull_checkpoint(tmp_path / "node1", DistEnv(1, 2, 0))
    assert m.fs.ops == []
    (got / "rng_rank1.pt").write_bytes(b"torn")  # a half-written local file is replaced
    m.pull_checkpoint(tmp_path / "node1", DistEnv(1, 2, 1))
    assert [Path(p).name for _, p in m.fs.ops] == ["rng_rank1.pt"]
    assert (got / "rng_rank1.pt").read_bytes() == b"step00000003/rng_rank1.pt"


def test_empty_store_resumes_nothing(tmp_path):
    assert _mirror(tmp_path).pull_checkpoint(tmp_path / "node", RANK0) is None


def test_trees_are_complete_or_absent(tmp_path):
    m = _mirror(tmp_path)
    src = tmp_path / "tok"
    (src / "sub").mkdir(parents=True)
    (src / "tokenizer.json").write_text("{}")
    (src / "sub" / "layout.json").write_text("[1]")
    remote = f"{m.run_root}/tokenizer"
    m.fs.fail_on = ("layout.json",)
    with pytest.raises(ConnectionError):
        m.push_tree(src, remote)
    assert not m.pull_tree(remote, tmp_path / "got")  # a half-uploaded tree is not taken
    m.fs.fail_on = ()
    m.push_tree(src, remote)
    assert m.pull_tree(remote, tmp_path / "got")
    assert (tmp_path / "got" / "sub" / "layout.json").read_text() == "[1]"


def test_rendezvous_args():
    from arm.train.pretrain import _rendezvous_args

    assert _rendezvous_args({}) == ["--standalone"]
    env = {"NNODES": "2", "NODE_RANK": "1", "MASTER_ADDR": "gpu-0", "RDZV_ID": "job7"}
    assert _rendezvous_args(env) == ["--nnodes=2", "--rdzv_backend=c10d", "--rdzv_endpoint=gpu-0:29400",
                                     "--rdzv_id=job7", "--rdzv_conf=is_host=0"]
    assert _rendezvous_args({**env, "NODE_RANK": "0", "MASTER_PORT": "5"})[-3:] == \
        ["--rdzv_endpoint=gpu-0:5", "--rdzv_id=job7", "--rdzv_conf=is_host=1"]
    with pytest.raises(RuntimeError, match="NNODES=2 needs MASTER_ADDR, RDZV_ID"):
        _rendezvous_args({"NNODES": "2"})
    with pytest.raises(RuntimeError, match="NODE_RANK='2' is not a node of NNODES=2"):
        _rendezvous_args({**env, "NODE_RANK": "2"})
    with pytest.raises(RuntimeError, match="NNODES must be a whole number"):
        _rendezvous_args({"NNODES": "two"})


def test_several_nodes_need_a_run_store(monkeypatch):
    from arm.train.pretrain import pretrain_multiprocess

    monkeypatch.setenv("NNODES", "2")
    with pytest.raises(RemoteError, match="2 nodes share no disk: set pretrain.remote"):
        pretrain_multiprocess(str(REPO / "params.yaml"), "micro", [], nproc=1)


def test_fan_out_gives_each_node_its_queue_and_rendezvous():
    from flows.pretrain import node_env, node_queues

    assert node_queues(3, None) == ["node-0", "node-1", "node-2"]
    with pytest.raises(ValueError, match="need 2 distinct work queues"):
        node_queues(2, ["a", "a"])
    with pytest.raises(ValueError, match="2 or more nodes"):
        node_queues(1, None)
    assert node_env(2, 1, "gpu-0", 29400, "arm-x") == {"NNODES": "2", "NODE_RANK": "1", "MASTER_ADDR": "gpu-0",
                                                       "MASTER_PORT": "29400", "RDZV_ID": "arm-x"}


# ----------------------------------------------------------------------------- two nodes, one SeaweedFS


def _run_nodes(root: Path, remote: str, endpoint: str, stop_after: int = 0, **extra) -> list[str]:
    """Both nodes at once, each in its own dir (same relative paths), one rank each; returns their logs."""
    (port,) = free_ports(1)
    rdzv = uuid.uuid4().hex[:8]
    o = {"pretrain.data": "shapes", "pretrain.images": "oracle", "pretrain.zero_stage": 2, "pretrain.remote": remote,
         "storage.endpoint_url": endpoint, "pretrain.checkpoints": "ckpt", "pretrain.output": "model",
         "pretrain.metrics": "metrics.json", "pretrain.plot": "curve", **extra}
    code = ("import json, sys; from arm.train.pretrain import pretrain_multiprocess as run; "
            "print('METRICS', json.dumps(run(sys.argv[1], 'micro', sys.argv[3:], 1, int(sys.argv[2]) or None)))")
    procs, logs = [], []
    for r in range(2):
        node = root / f"node{r}"
        node.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "NNODES": "2", "NODE_RANK": str(r), "MASTER_ADDR": "127.0.0.1",
               "MASTER_PORT": str(port), "RDZV_ID": rdzv}
        log = open(node / f"log{len(list(node.glob('log*')))}.txt", "w")
        logs.append(Path(log.name))
        procs.append(subprocess.Popen([sys.executable, "-c", code, str(REPO / "params.yaml"), str(stop_after),
                                       *[f"{k}={v}" for k, v in o.items()]], cwd=node, env=env, stdout=log,
                                      stderr=subprocess.STDOUT))
        log.close()
    for p, log in zip(procs, logs):
        try:
            rc = p.wait(timeout=900)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        assert rc == 0, log.read_text()[-4000:]
    return [log.read_text() for log in logs]


def _metrics(log: str) -> dict:
    return json.loads(next(line for line in log.splitlines() if line.startswith("METRICS "))[len("METRICS "):])


def _local_ranks(node: Path) -> set[int]:
    return {int(p.name[len("rng_rank"):-3]) for p in node.glob("ckpt/*/step*/rng_rank*.pt")}


def _curve(node_dirs: list[Path]) -> list[dict]:
    (path,) = [d / "curve" for d in node_dirs if (d / "curve").exists()]  # on rank 0's node only
    return read_curve(path)


@pytest.mark.slow
@pytest.mark.xdist_group("deepspeed")
def test_two_nodes_share_only_s3_and_resume_from_it(s3_server, tmp_path, monkeypatch):
    from arm.config import StorageConfig
    from arm.fs import fs_for

    s3_server.use(monkeypatch)
    bucket = s3_server.new_bucket()
    fs, _ = fs_for(f"s3://{bucket}", StorageConfig(endpoint_url=s3_server.endpoint_url))
    a, b = tmp_path / "a", tmp_path / "b"
    nodes_a = [a / "node0", a / "node1"]

    # --- an uninterrupted run; the store keeps one checkpoint, so does each node's disk
    logs = _run_nodes(a, f"s3://{bucket}/a", s3_server.endpoint_url, **{"pretrain.keep_checkpoints": 1})
    m0, m1 = _metrics(logs[0]), _metrics(logs[1])
    assert m0 == m1 and m0["steps"] == 6 and m0["world_size"] == 2  # both nodes report rank 0's metrics
    run = m0["run"]
    store = f"{bucket}/a/checkpoints/{run}"
    assert fs.cat_file(f"{store}/latest").decode() == "step00000006"
    objects = {p[len(store) + 1:] for p in fs.find(store)}  # retention: only step 6 is left
    assert {p for p in objects if not p.startswith(("tokenizer/", "documents/"))} == \
        {"latest", "tokenizer.files.json", *(f"step00000006/{n}" for n in TAG_FILES)}
    # the training documents were written once, to the store, and both nodes streamed them from there
    assert "documents/manifest.json" in objects
    assert not any((n / "ckpt" / run / "documents").exists() for n in nodes_a)
    assert fs.exists(f"{bucket}/a/export/model.safetensors") and fs.exists(f"{bucket}/a/export.files.json")
    assert json.loads(fs.cat_file(f"{bucket}/a/metrics.json"))["run"] == run

    # each node's disk holds only what its own rank wrote, plus what it pulled from S3 (the tokenizer)
    ranks = [_local_ranks(n) for n in nodes_a]
    assert sorted(ranks, key=min) == [{0}, {1}]
    for node, (rank,) in zip(nodes_a, ranks):
        run_dir = node / "ckpt" / run
        assert sorted(p.name for p in run_dir.glob("step*")) == ["step00000006"]  # local retention too
        files = {p.name for p in (run_dir / "step00000006").iterdir()}
        assert files == {n for n in TAG_FILES if writer_rank(n) == rank}
        assert (run_dir / "tokenizer" / "tokenizer.json").read_bytes() == \
            fs.cat_file(f"{store}/tokenizer/tokenizer.json")
        assert (node / "model").exists() == (rank == 0)  # the export is written where rank 0 ran

    # --- the same job killed after step 4, both nodes' checkpoint dirs lost, then resumed from S3
    nodes_b = [b / "node0", b / "node1"]
    for log in _run_nodes(b, f"s3://{bucket}/b", s3_server.endpoint_url, stop_after=4):
        assert _metrics(log)["stopped"] == "stop_after"
    assert not fs.exists(f"{bucket}/b/export.files.json")
    for node in nodes_b:
        shutil.rmtree(node / "ckpt")
        shutil.rmtree(node / "curve", ignore_errors=True)
    logs = _run_nodes(b, f"s3://{bucket}/b", s3_server.endpoint_url)
    assert sum("at step 4" in log for log in logs) == 1  # rank 0 logged the resume from the store's step 4
    assert _metrics(logs[0])["steps"] == 6

    ca, cb = _curve(nodes_a), _curve(nodes_b)
    assert [r["step"] for r in cb] == list(range(1, 7))
    for ra, rb in zip(ca, cb):
        assert ra.keys() == rb.keys(), ra["step"]
        for col in ra:
            assert math.isclose(ra[col], rb[col], rel_tol=1e-6, abs_tol=1e-7), (ra["step"], col)
    wa = load(fs.cat_file(f"{bucket}/a/export/model.safetensors"))
    wb = load(fs.cat_file(f"{bucket}/b/export/model.safetensors"))
    assert wa.keys() == wb.keys() and all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)
