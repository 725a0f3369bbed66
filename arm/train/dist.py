"""Process-group setup from torchrun-style environment variables.

RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT are what torchrun, the `deepspeed`
launcher and a Prefect work pool running either of them set. Without them this is one process:
the variables are filled in for a world of one on a free local port.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import torch

T = TypeVar("T")

@dataclass(frozen=True)
class DistEnv:
    rank: int
    world_size: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env() -> DistEnv:
    if "RANK" not in os.environ:
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(free_port()))
    try:
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local = int(os.environ.get("LOCAL_RANK", rank))
    except (KeyError, ValueError) as e:
        raise RuntimeError(f"bad torchrun environment (RANK/WORLD_SIZE/LOCAL_RANK): {e}") from None
    if not 0 <= rank < world:
        raise RuntimeError(f"RANK {rank} outside WORLD_SIZE {world}")
    if "MASTER_ADDR" not in os.environ or "MASTER_PORT" not in os.environ:
        raise RuntimeError("WORLD_SIZE > 1 needs MASTER_ADDR and MASTER_PORT")
    return DistEnv(rank, world, local)


def device_for(e: DistEnv) -> torch.device:
    if torch.cuda.is_available():
        torch.cuda.set_device(e.local_rank)
        return torch.device("cuda", e.local_rank)
    return torch.device("cpu")


def init(e: DistEnv) -> None:
    """NCCL on GPUs, gloo on CPU; idempotent."""
    import deepspeed
    import torch.distributed as td

    if td.is_initialized():
        return
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False, verbose=False)


def from_main(fn: Callable[[], T]) -> T:
    """Rank 0 computes a value that every rank then uses (all must agree: a tag, the data version).
    If it fails there, every rank raises, rather than the others waiting in the next collective."""
    import torch.distributed as td

    box: list = [None, None]
    many = td.is_initialized() and td.get_world_size() > 1
    if not td.is_initialized() or td.get_rank() == 0:
        try:
            box[0] = fn()
        except Exception as e:
            box[1] = f"{type(e).__name__}: {e}"
            if many:
                td.broadcast_object_list(box, src=0)
            raise
    if many:
        td.broadcast_object_list(box, src=0)
    if box[1] is not None:
        raise RuntimeError(f"rank 0 failed: {box[1]}")
    return box[0]


DIST_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def torchrun(module: str, nproc: int, params: str, preset: str | None, overrides: list[str],
             rendezvous: list[str] | None = None, extra: list[str] | None = None) -> None:
    """Run `python -m module --params .. --preset .. --set ..` in `nproc` processes under torchrun
    (`rendezvous`: its node arguments; default one standalone node). Raises on a failed process."""
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "torch.distributed.run", *(rendezvous or ["--standalone"]),
           f"--nproc_per_node={nproc}", "-m", module, "--params", str(params)]
    if preset:
        cmd += ["--preset", preset]
    for o in overrides:
        cmd += ["--set", o]
    cmd += extra or []
    # a parent that is itself a rank (a test, a pretrain process) must not leak its world
    env = {k: v for k, v in os.environ.items() if k not in DIST_VARS}
    proc = subprocess.run(cmd, env=env)
    if proc.returncode:
        raise RuntimeError(f"torchrun with {nproc} processes failed (exit {proc.returncode}): {' '.join(cmd)}")


def stage_main(prog: str, description: str | None, argv: list[str] | None, run: Callable, **extra: dict) -> int:
    """The per-process entry point of a torchrun-launched stage: parse --params/--preset/--set (and
    `extra`: name -> add_argument kwargs; the `deepspeed` launcher's --local_rank is accepted),
    load the config (its errors exit 2), call `run(cfg, args)` and print its dict on rank 0."""
    import argparse
    import json
    import logging
    import sys

    from arm.config import ConfigError, load_config

    ap = argparse.ArgumentParser(prog=prog, description=description)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--preset", default=None)
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="key.path=value")
    ap.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)
    for name, kwargs in extra.items():
        ap.add_argument(name, **kwargs)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        cfg = load_config(args.params, args.preset, args.overrides)
    except ConfigError as e:
        print(e, file=sys.stderr)
        return 2
    out = run(cfg, args)
    if os.environ.get("RANK", "0") == "0":
        print(json.dumps(out, indent=2, default=str))
    return 0


def barrier() -> None:
    import torch.distributed as td

    if td.is_initialized():
        td.barrier()
