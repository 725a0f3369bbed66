"""The tokenize and train_tokenizer stages over N processes on this node: the torchrun runners and
the per-process entry.

    python -m torch.distributed.run --standalone --nproc_per_node 8 -m arm.tokenizer.launch --preset 7b
    python -m torch.distributed.run --standalone --nproc_per_node 8 -m arm.tokenizer.launch --preset 7b --stage train
    arm tokenize --nproc 8 --preset 7b          # the same, through the Prefect flow
    arm train-tokenizer --preset 7b             # tokenizer.train.nproc processes

Each process reads its rank from the environment (arm.train.dist, accelerate) and runs the same
stage function as the single-process command. tokenize: rank r encodes the shards k with
k % N == r (arm.tokenizer.tokens); one node only, the shards are written to a local directory
that rank 0 then indexes. train: each rank trains on its slice of every global batch
(arm.tokenizer.train); rank 0 writes the model, metrics and curve.
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


def train_tokenizer_multiprocess(params: str, preset: str | None, overrides: list[str], nproc: int,
                                 resume: bool = True, stop_at: int | None = None) -> dict:
    """Trains the tokenizer in `nproc` local processes via torchrun; returns the metrics (or, when
    stopped at `stop_at`, {"stopped_at": step})."""
    import torch

    from arm.config import load_config
    from arm.train.accel import latest

    cfg = load_config(params, preset, overrides)
    check_nproc(nproc, cfg.tokenizer.device, torch.cuda.device_count() if torch.cuda.is_available() else 0)
    extra = ["--stage", "train"] + ([] if resume else ["--no-resume"])
    extra += ["--stop-at", str(stop_at)] if stop_at is not None else []
    dist.torchrun("arm.tokenizer.launch", nproc, params, preset, overrides, extra=extra)
    if stop_at is not None and stop_at < cfg.tokenizer.train.steps:
        found = latest(Path(cfg.tokenizer.checkpoint_dir))
        return {"stopped_at": found[1]["step"] if found else 0}
    return json.loads(Path(cfg.tokenizer.metrics).read_text())


def _run(cfg, args) -> dict:
    import torch.distributed as td

    if args.stage == "train":
        from arm.tokenizer.train import train_tokenizer

        out = train_tokenizer(cfg, resume=args.resume, stop_at=args.stop_at)  # progress bar on rank 0 only
        out = {k: v for k, v in out.items() if k != "curve"}
    else:
        from arm.tokenizer.tokens import tokenize

        manifest = tokenize(cfg)
        out = {k: v for k, v in manifest.items() if k != "by_split_task"}
    if td.is_initialized():
        td.destroy_process_group()
    return out


def main(argv: list[str] | None = None) -> int:
    return dist.stage_main("python -m arm.tokenizer.launch", __doc__, argv, _run,
                           **{"--stage": {"choices": ["tokenize", "train"], "default": "tokenize"},
                              "--no-resume": {"dest": "resume", "action": "store_false"},
                              "--stop-at": {"dest": "stop_at", "type": int, "default": None}})


if __name__ == "__main__":
    sys.exit(main())
