"""A mirror of a pretraining run in a store every node can reach, so nodes share no disk.

Layout under `pretrain.remote` (s3://bucket/prefix, or a path; opened through arm.fs):

    checkpoints/<run>/tokenizer/...       the text tokenizer rank 0 built (+ tokenizer.files.json)
    checkpoints/<run>/<tag>/...           DeepSpeed's checkpoint files and our rng_rank<r>.pt
    checkpoints/<run>/latest              the newest complete tag
    export/...                            the exported model dir (+ export.files.json)
    metrics.json                          rank 0's metrics of the finished run

Every "this is complete" marker is written after what it vouches for (`latest` after all ranks'
tag files, `<name>.files.json` after the tree, metrics.json after the export), so a crash mid-upload
leaves the previous state in charge, never a half-written one.

Which rank wrote a checkpoint file follows from DeepSpeed's naming: `zero_pp_rank_<r>_...` (ZeRO
partitions) and our `rng_rank<r>.pt` belong to rank r; the rest (`mp_rank_00_model_states.pt`) is
written by rank 0 and read by all. Each rank uploads only its own files and downloads only what it
loads (its own plus, once per node, the shared ones), so a 7B checkpoint crosses the network once
up and each node pulls its share, not every rank's optimizer state.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from fsspec import AbstractFileSystem
from fsspec.implementations.local import LocalFileSystem

from arm.config import ArmConfig, StorageConfig
from arm.fs import fs_for, join
from arm.io import atomic_path
from arm.train.checkpoint import LATEST
from arm.train.dist import DistEnv, from_main

_RANK_FILE = re.compile(r"(?:zero_pp_rank_|rng_rank|data_rank)(\d+)[_.]")
_TAG = re.compile(r"step\d+")
METRICS = "metrics.json"


class RemoteError(RuntimeError):
    pass


def writer_rank(name: str) -> int:
    """The rank that writes (and alone reads back) a checkpoint file; 0 for the shared ones."""
    m = _RANK_FILE.search(name)
    return int(m.group(1)) if m else 0


def _is_shared(name: str) -> bool:
    return _RANK_FILE.search(name) is None


def _all_ok(ok: bool) -> bool:
    """One verdict for all ranks: a rank that failed alone would leave the others waiting in the
    next collective until the process group times out."""
    import torch.distributed as td

    if not (td.is_initialized() and td.get_world_size() > 1):
        return ok
    device = torch.device("cuda", torch.cuda.current_device()) if td.get_backend() == "nccl" else torch.device("cpu")
    failed = torch.tensor([0.0 if ok else 1.0], device=device)
    td.all_reduce(failed)
    return failed.item() == 0


def _on_all_ranks(what: str, fn: Callable[[], None]) -> None:
    """Run this rank's share of `what`; raise on every rank if it failed on any."""
    err: BaseException | None = None
    try:
        fn()
    except Exception as e:  # noqa: BLE001 - reported to all ranks, then re-raised below
        err = e
    if not _all_ok(err is None):
        where = f"{type(err).__name__}: {err}" if err else "on another rank"
        raise RemoteError(f"{what} failed ({where})") from err


def spans_nodes(denv: DistEnv) -> bool:
    """Whether this world has ranks on other machines (torchrun sets LOCAL_WORLD_SIZE per node)."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", denv.world_size)) < denv.world_size


def require_store(remote: str | None, nnodes: int) -> None:
    if nnodes > 1 and not remote:
        raise RemoteError(f"{nnodes} nodes share no disk: set pretrain.remote to a store all of them reach "
                          "(s3://bucket/prefix) for the tokenizer, checkpoints and the export")


@dataclass
class RunMirror:
    fs: AbstractFileSystem
    root: str  # the store's root inside fs
    run: str  # the run dir's name (fingerprint prefix)
    url: str  # for messages

    @property
    def run_root(self) -> str:
        return join(self.root, "checkpoints", self.run)

    # ------------------------------------------------------------------ trees (tokenizer, export)

    def push_tree(self, local: Path, remote: str) -> None:
        """Upload a dir; its file list `<remote>.files.json` goes up last and marks it complete."""
        marker = f"{remote}.files.json"
        if self.fs.exists(marker):
            self.fs.rm(marker)  # from here until the end the tree is incomplete
        if self.fs.exists(remote):
            self.fs.rm(remote, recursive=True)  # no stale files of an older tree
        files = sorted(p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file())
        for rel in files:
            self.fs.put_file(str(local / rel), join(remote, rel))
        self.fs.pipe_file(marker, json.dumps({"files": files}).encode())

    def pull_tree(self, remote: str, local: Path) -> bool:
        """Download a complete tree into `local` (atomically); False if the store has none."""
        marker = f"{remote}.files.json"
        if not self.fs.exists(marker):
            return False
        files = json.loads(self.fs.cat_file(marker))["files"]
        with atomic_path(local) as tmp:
            tmp.mkdir(parents=True)
            for rel in files:
                (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                self.fs.get_file(join(remote, rel), str(tmp / rel))
        return True

    def share_dir(self, local: Path, name: str, denv: DistEnv, build: Callable[[], None]) -> None:
        """Rank 0 takes the store's copy of a run file tree (or builds it and uploads it); then every
        other node pulls it. `build` writes `local` atomically."""
        remote = join(self.run_root, name)

        def main() -> None:
            if not local.exists() and not self.pull_tree(remote, local):
                build()
            if not self.fs.exists(f"{remote}.files.json"):
                self.push_tree(local, remote)

        def other_nodes() -> None:
            if not local.exists() and not self.pull_tree(remote, local):
                raise RemoteError(f"{self.url}: no {name} in the run store although rank 0 uploaded it")

        _on_all_ranks(f"{name} from rank 0 to {self.url}", main if denv.is_main else lambda: None)
        _on_all_ranks(f"{name} from {self.url}", other_nodes if denv.local_rank == 0 and not denv.is_main else lambda: None)

    # ------------------------------------------------------------------ checkpoints

    def latest(self) -> str | None:
        path = join(self.run_root, LATEST)
        self.fs.invalidate_cache(self.run_root)  # another node may have written it
        return self.fs.cat_file(path).decode().strip() if self.fs.exists(path) else None

    def push_checkpoint(self, run_dir: Path, tag: str, denv: DistEnv, keep: int) -> None:
        """After engine.save_checkpoint on all ranks: each rank uploads the files it wrote; once all
        have, rank 0 names the tag in `latest` and prunes old tags (keep the newest `keep`)."""
        tag_dir = run_dir / tag

        def upload_mine() -> None:
            for f in sorted(tag_dir.iterdir()):
                if f.is_file() and not f.name.startswith(".") and writer_rank(f.name) == denv.rank:
                    self.fs.put_file(str(f), join(self.run_root, tag, f.name))

        _on_all_ranks(f"upload of checkpoint {tag} to {self.url} (`latest` still names the previous one)", upload_mine)

        def publish() -> None:
            self._write_latest(tag)
            self.prune(keep)

        _on_all_ranks(f"publishing checkpoint {tag} in {self.url}", publish if denv.is_main else lambda: None)

    def _write_latest(self, tag: str) -> None:
        # a temp object moved into place: one atomic PUT/copy on S3, a rename on a local path
        tmp = join(self.run_root, f".{LATEST}.tmp")
        self.fs.pipe_file(tmp, tag.encode())
        self.fs.mv(tmp, join(self.run_root, LATEST))

    def tags(self) -> list[str]:
        """Tags that hold files (SeaweedFS lists a prefix whose objects are all deleted as a folder)."""
        self.fs.invalidate_cache(self.run_root)
        prefix = self.run_root + "/"
        tops = {p[len(prefix):].split("/", 1)[0] for p in self.fs.find(self.run_root) if p.startswith(prefix)}
        return sorted(t for t in tops if _TAG.fullmatch(t))

    def prune(self, keep: int) -> None:
        """Delete all but the newest `keep` tags in the store, never the one `latest` names."""
        current = self.latest()
        for old in self.tags()[:-keep]:
            if old != current:
                self.fs.rm(join(self.run_root, old), recursive=True)

    def pull_checkpoint(self, run_dir: Path, denv: DistEnv) -> str | None:
        """The tag all ranks resume from: the one the store's `latest` names (the store, not a
        node's disk, knows which checkpoint every rank finished). Each rank downloads the files it
        loads that its disk lacks; the shared ones once per node."""
        tag = from_main(self.latest)
        if tag is None:
            return None

        def download() -> None:
            remote = join(self.run_root, tag)
            self.fs.invalidate_cache(remote)
            tag_dir = run_dir / tag
            tag_dir.mkdir(parents=True, exist_ok=True)
            for e in self.fs.ls(remote, detail=True):
                name = e["name"].rstrip("/").rsplit("/", 1)[-1]
                mine = writer_rank(name) == denv.rank if not _is_shared(name) else denv.local_rank == 0
                dest = tag_dir / name
                if e["type"] != "file" or not mine or (dest.exists() and dest.stat().st_size == e["size"]):
                    continue
                part = tag_dir / f".{name}.{os.getpid()}.part"
                self.fs.get_file(e["name"], str(part))
                os.replace(part, dest)

        _on_all_ranks(f"download of checkpoint {tag} from {self.url}", download)
        return tag

    # ------------------------------------------------------------------ the finished run

    def push_export(self, model_dir: Path, metrics: dict) -> None:
        """Rank 0: the exported model dir, then the metrics (their presence marks the run finished)."""
        marker = join(self.root, METRICS)
        if self.fs.exists(marker):
            self.fs.rm(marker)
        self.push_tree(Path(model_dir), join(self.root, "export"))
        self.fs.pipe_file(marker, json.dumps(metrics, indent=2, sort_keys=True, default=str).encode())


def mirror_for(cfg: ArmConfig, run_dir: Path, denv: DistEnv) -> RunMirror | None:
    """The run's mirror in `pretrain.remote`, or None on one machine without one."""
    url = cfg.pretrain.remote
    if not url:
        require_store(url, 2 if spans_nodes(denv) else 1)
        return None
    fs, root = fs_for(url, cfg.storage)
    if isinstance(fs, LocalFileSystem):
        fs = LocalFileSystem(auto_mkdir=True)  # object stores have no directories to make first
    return RunMirror(fs, root.rstrip("/"), run_dir.name, url)


def fetch_metrics(url: str, storage: StorageConfig) -> dict:
    """A finished run's metrics from its store (any node can read them, wherever rank 0 ran)."""
    fs, root = fs_for(url, storage)
    path = join(root.rstrip("/"), METRICS)
    if not fs.exists(path):
        raise RemoteError(f"{url}: no {METRICS}: the run did not finish its export")
    return json.loads(fs.cat_file(path))
