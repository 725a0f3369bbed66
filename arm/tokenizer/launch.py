"""The tokenize stage over N processes on this node: the torchrun runner and the per-process entry.

    python -m torch.distributed.run --standalone --nproc_per_node 8 -m arm.tokenizer.launch --preset 7b
    arm tokenize --nproc 8 --preset 7b          # the same, through the Prefect flow

Each process reads its rank from the environment (arm.train.dist) and runs the same stage
function as `arm tokenize`; rank r encodes the shards k with k % N == r (arm.tokenizer.tokens).
One node only: the shards are written to a local directory that rank 0 then indexes.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from arm.train import dist

def check_nproc(nproc: int, device: str, cuda_devices: int) -> None:
    """A clear error for a process count this node cannot run: < 1, or more processes than GPUs
    when encoding on CUDA (one process per GPU)."""
    if nproc < 1:
        raise ValueError(f"--nproc {nproc}: need at least 1 process")
    on_cuda = device.startswith("cuda") or (device == "auto" and cuda_devices > 0)
    if on_cuda and nproc > cuda_devices:
        raise ValueError(f"--nproc {nproc}: this node has {cuda_devices} CUDA device(s) and tokenize runs one "
                         f"process per GPU (tokenizer.device={device!r}; use --nproc <= {cuda_devices})")


def tokenize_multiprocess(params: str, preset: str | None, overrides: list[str], nproc: int) -> dict:
    """Runs the stage in `nproc` local processes via torchrun; returns the merged manifest."""
    import torch

    from arm.config import load_config
    from arm.tokenizer.tokens import MANIFEST_FILE

    cfg = load_config(params, preset, overrides)
    check_nproc(nproc, cfg.tokenizer.device, torch.cuda.device_count() if torch.cuda.is_available() else 0)
    dist.torchrun("arm.tokenizer.launch", nproc, params, preset, overrides)
    return json.loads((Path(cfg.tokenizer.tokens.output) / MANIFEST_FILE).read_text())


def _run(cfg, _args) -> dict:
    import torch.distributed as td

    from arm.tokenizer.tokens import tokenize

    manifest = tokenize(cfg)  # progress bar on rank 0 only
    if td.is_initialized():
        td.destroy_process_group()
    return {k: v for k, v in manifest.items() if k != "by_split_task"}


def main(argv: list[str] | None = None) -> int:
    return dist.stage_main("python -m arm.tokenizer.launch", __doc__, argv, _run)


if __name__ == "__main__":
    sys.exit(main())
