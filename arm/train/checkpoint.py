"""Training checkpoints: DeepSpeed's (model, optimizer, scheduler, client state) plus per-rank RNG.

Each checkpoint is a tag dir under the run dir; DeepSpeed writes `latest` only after a tag is
complete, so a crash mid-save leaves the previous checkpoint in charge. RNG states are saved as
plain tensors and lists so they load with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import numpy as np
import torch

from arm.io import atomic_write_bytes

LATEST = "latest"


def rng_state() -> dict:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_rng(tag_dir: Path, rank: int) -> None:
    import io

    buf = io.BytesIO()
    torch.save(rng_state(), buf)
    atomic_write_bytes(tag_dir / f"rng_rank{rank}.pt", buf.getvalue())


def load_rng(tag_dir: Path, rank: int) -> None:
    path = tag_dir / f"rng_rank{rank}.pt"
    if not path.exists():
        raise FileNotFoundError(f"{path}: checkpoint has no RNG state for rank {rank} (saved with another world size?)")
    set_rng_state(torch.load(path, weights_only=True))


def save_data_position(tag_dir: Path, rank: int, position: dict | None) -> None:
    """This rank's position in its own document stream (arm.train.shards): per rank, because
    DeepSpeed keeps client state only once, and each rank streams different shards."""
    import json

    atomic_write_bytes(tag_dir / f"data_rank{rank}.json", json.dumps(position).encode())


def load_data_position(tag_dir: Path, rank: int, world_size: int) -> dict | None:
    """This rank's saved position; a clear refusal when the checkpoint was written by another
    number of ranks (their data shards and ZeRO partitions depend on it), never a silent restart."""
    import json

    path = tag_dir / f"data_rank{rank}.json"
    saved = json.loads(path.read_text()) if path.exists() else None
    saved_world = saved.get("world_size") if saved else None
    if saved_world != world_size:
        raise ValueError(f"{tag_dir}: checkpoint written by {saved_world or 'fewer'} rank(s), this run has world_size "
                         f"{world_size}; resume with that many processes or start a new run (another "
                         "pretrain.checkpoints)")
    return saved


def latest_tag(run_dir: Path) -> str | None:
    path = run_dir / LATEST
    return path.read_text().strip() if path.exists() else None


def tag_name(step: int) -> str:
    return f"step{step:08d}"


def prune(run_dir: Path, keep: int) -> None:
    """Delete all but the newest `keep` complete checkpoints (never the one `latest` names)."""
    current = latest_tag(run_dir)
    tags = sorted(p for p in run_dir.glob("step*") if p.is_dir())
    for old in tags[:-keep]:
        if old.name != current:
            shutil.rmtree(old, ignore_errors=True)
