"""The tokenize stage: every curated image encoded once into code shards, plus an index.

Layout under `tokenizer.tokens.output` (default `data/tokens/`):

    shards/codes-00000.parquet   image_sha, codes (fixed-size list of h*w int32), in sha order;
                                 a tokenizer with several aspect buckets writes each image at its
                                 own bucket: codes (list of int32) and grid ([h, w])
    index.parquet                one row per curated sample: id, split, task, image_sha,
                                 source_image_sha, image_row, source_image_row (global code rows)
    manifest.json                tokenizer fingerprint, grid, levels, counts per split/task, speed,
                                 world size

Images are deduplicated by sha and sorted, so shard k always holds the same images for the same
store: the output is a pure function of (store, tokenizer). A run writes `run.json` (its
fingerprint) first; a re-run with the same fingerprint keeps the shards that are complete and
encodes only the rest, which is what makes the stage resumable per shard.

Data parallel: `tokenize` runs as one rank of the world the environment describes (torchrun's
RANK / WORLD_SIZE; without them, a world of one in this process). Rank r encodes the shards k
with k % world == r, so the shards do not depend on the number of processes; a DataLoader
decodes and resizes each rank's PNGs in worker processes while the encoder runs. After a
barrier rank 0 writes the one index and manifest. `arm.tokenizer.launch` starts N ranks.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch.utils.data import DataLoader, Dataset

from arm.io import atomic_path, atomic_write_json, sha256_file

log = logging.getLogger(__name__)

SHARDS_DIR = "shards"
INDEX_FILE = "index.parquet"
MANIFEST_FILE = "manifest.json"
RUN_FILE = "run.json"
FORMAT = "arm-image-tokens"


def _clear(p: Path) -> None:
    if p.is_dir():
        shutil.rmtree(p)
    elif p.exists():
        p.unlink()


def shard_name(i: int) -> str:
    return f"codes-{i:05d}.parquet"


def tokenizer_fingerprint(model_dir: str | Path) -> str:
    d = Path(model_dir)
    return hashlib.sha256((sha256_file(d / "config.json") + sha256_file(d / "model.safetensors")).encode()).hexdigest()[:20]


def _shard_table(shas: list[str], codes: np.ndarray | list[torch.Tensor]) -> pa.Table:
    """One grid: `codes` is [n, h*w]. Several: a [h, w] tensor per image, each at its own bucket."""
    if isinstance(codes, np.ndarray):
        n, width = codes.shape
        flat = pa.array(codes.reshape(-1).astype(np.int32), type=pa.int32())
        return pa.table({
            "image_sha": pa.array(shas, type=pa.string()),
            "codes": pa.FixedSizeListArray.from_arrays(flat, width),
        })
    return pa.table({
        "image_sha": pa.array(shas, type=pa.string()),
        "codes": pa.array([c.reshape(-1).tolist() for c in codes], type=pa.list_(pa.int32())),
        "grid": pa.array([list(c.shape) for c in codes], type=pa.list_(pa.int32(), 2)),
    })


def _shard_ok(path: Path, shas: list[str], width: int | None) -> bool:
    """A shard counts as done only if it holds exactly the expected images and code layout
    (`width` h*w for one grid; None for per-image grids)."""
    try:
        t = pq.read_table(path)
    except Exception:
        return False
    if t.column("image_sha").to_pylist() != shas:
        return False
    if width is None:
        return "grid" in t.column_names
    return "grid" not in t.column_names and t.schema.field("codes").type.list_size == width


class ShardBatches(Dataset):
    """Item i: (shard, offset, uint8 [b, 3, S, S]), one batch of one shard, decoded and resized
    wherever the item is loaded (a DataLoader worker), so PNG decode overlaps the encoder.
    `size` None (a tokenizer with aspect buckets): the RGB images at their own size instead; the
    tokenizer fits each to its bucket.

    Holds the store's path, not the store: each worker opens its own read-only connection.
    """

    def __init__(self, store_root: str | Path, batches: list[tuple[int, int, list[str]]], size: int | None):
        self.store_root, self.batches, self.size = Path(store_root), batches, size
        self._store = None

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> tuple[int, int, torch.Tensor | list]:
        from arm.data.images import to_rgb
        from arm.data.store import CuratedStore
        from arm.tokenizer.images import pil_to_uint8

        if self._store is None:
            self._store = CuratedStore(self.store_root)
        shard, offset, shas = self.batches[i]
        images = self._store.load_images(shas)
        if self.size is None:
            return shard, offset, [to_rgb(im) for im in images]
        pixels = np.stack([pil_to_uint8(im, self.size) for im in images])
        return shard, offset, torch.from_numpy(pixels)


def shard_batches(shas: list[str], shards: list[int], shard_size: int, batch: int) -> list[tuple[int, int, list[str]]]:
    """(shard, offset, shas) of every batch of `shards`; batch boundaries restart at each shard, so a
    shard's batches are the same whichever rank encodes it."""
    out = []
    for k in shards:
        part = shas[k * shard_size : (k + 1) * shard_size]
        out += [(k, i, part[i : i + batch]) for i in range(0, len(part), batch)]
    return out


def _dist_env():
    """This process's rank; a world of one (no process group) when torchrun did not start it."""
    from arm.train import dist

    if "RANK" not in os.environ:
        return dist.DistEnv(rank=0, world_size=1, local_rank=0)
    e = dist.env()
    if e.world_size > 1:
        dist.init(e)
    return e


def _device(name: str, e) -> torch.device:
    """auto: this rank's GPU, else CPU; a bare `cuda` also means this rank's GPU (one per process)."""
    from arm.tokenizer.model import resolve_device
    from arm.train import dist

    if name == "auto":
        return dist.device_for(e)
    d = resolve_device(name)
    if d.type == "cuda" and d.index is None:
        d = torch.device("cuda", e.local_rank)
        torch.cuda.set_device(d)
    return d


def _gather(obj: Any, world: int) -> list[Any]:
    if world == 1:
        return [obj]
    import torch.distributed as td

    out: list[Any] = [None] * world
    td.all_gather_object(out, obj)
    return out


def _encode_shards(model, loader: DataLoader, shas: list[str], shard_size: int, width: int | None, shards_dir: Path,
                   device: torch.device, bar) -> tuple[int, float]:
    """Encodes the loader's batches and writes each shard (atomically) as soon as it is complete.

    Only the shards in flight are held in memory. bf16 autocast on CUDA; fp32 on CPU, where codes
    must be exact and reproducible. `width` None: each image at its own aspect bucket.
    Returns (images encoded, seconds inside the encoder)."""
    pending: dict[int, np.ndarray | list] = {}
    left: dict[int, int] = {}
    encoded, t_encode = 0, 0.0
    amp = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext())
    with torch.inference_mode():
        for shard, offset, pixels in loader:
            shard, offset = int(shard), int(offset)
            if shard not in pending:
                n = len(shas[shard * shard_size : (shard + 1) * shard_size])
                pending[shard] = np.zeros((n, width), dtype=np.int32) if width is not None else [None] * n
                left[shard] = n
            b = len(pixels)
            t0 = time.perf_counter()
            with amp:
                if width is None:
                    c = model.encode_each(pixels)
                else:
                    c = model.encode(pixels.to(device, non_blocking=True))
            t_encode += time.perf_counter() - t0  # encode() returns on the CPU: the GPU work is done
            pending[shard][offset : offset + b] = c if width is None else c.reshape(b, -1).numpy()
            left[shard] -= b
            encoded += b
            if bar is not None:
                bar.update(b)
            if left[shard] == 0:
                part = shas[shard * shard_size : (shard + 1) * shard_size]
                with atomic_path(shards_dir / shard_name(shard)) as tmp:
                    pq.write_table(_shard_table(part, pending.pop(shard)), tmp)
                del left[shard]
    if pending:  # the loader yields every batch of every shard it was given
        raise RuntimeError(f"tokenize: shards {sorted(pending)} left incomplete")
    return encoded, t_encode


def tokenize(cfg, *, tokenizer_dir: str | Path | None = None, store_root: str | Path | None = None,
             output: str | Path | None = None, progress: bool = True,
             logger: logging.Logger | None = None) -> dict[str, Any]:
    """Encodes every image of the curated store (image and edit source) once; returns the manifest.

    Runs as this process's rank (see the module doc); every rank returns the merged manifest."""
    from arm.data.store import CuratedStore
    from arm.tokenizer.model import VisualTokenizer
    from arm.train import dist

    say = (logger or log).info
    tcfg = cfg.tokenizer
    model_dir = Path(tokenizer_dir or tcfg.output)
    out = Path(output or tcfg.tokens.output)
    root = Path(store_root or cfg.data.store)
    shard_size, batch, workers = tcfg.tokens.shard_size, tcfg.tokens.batch_size, tcfg.tokens.workers
    if tcfg.train.threads:
        torch.set_num_threads(tcfg.train.threads)
    denv = _dist_env()
    device = _device(tcfg.device, denv)
    model = VisualTokenizer.from_pretrained(model_dir, device=device)
    store = CuratedStore(root)
    df = store.samples(columns=["id", "split", "task", "image_sha", "source_image_sha"])
    store.close()
    shas = sorted(set(df["image_sha"].dropna()) | set(df["source_image_sha"].dropna()))
    width = None if len(model.grids) > 1 else model.grid[0] * model.grid[1]

    tok_fp = tokenizer_fingerprint(model_dir)
    run_fp = hashlib.sha256("\n".join([tok_fp, str(shard_size), *shas]).encode()).hexdigest()[:20]
    shards_dir = out / SHARDS_DIR
    if denv.is_main:
        run_path = out / RUN_FILE
        previous = json.loads(run_path.read_text()).get("fingerprint") if run_path.is_file() else None
        if previous != run_fp:
            # Another tokenizer or store: nothing on disk can be reused.
            for p in (shards_dir, out / INDEX_FILE, out / MANIFEST_FILE):
                _clear(p)
            atomic_write_json(run_path, {"fingerprint": run_fp, "tokenizer": tok_fp, "images": len(shas)})
        shards_dir.mkdir(parents=True, exist_ok=True)
    dist.barrier()  # no rank looks at a shard before rank 0 has cleared a stale run

    n_shards = max(1, math.ceil(len(shas) / shard_size))
    mine = [k for k in range(n_shards) if k % denv.world_size == denv.rank]
    todo = [k for k in mine if not _shard_ok(shards_dir / shard_name(k), shas[k * shard_size : (k + 1) * shard_size], width)]
    if not shas and todo:  # an empty store still gets its one (empty) shard, as readers expect
        with atomic_path(shards_dir / shard_name(0)) as tmp:
            pq.write_table(_shard_table([], np.zeros((0, width), dtype=np.int32) if width else []), tmp)
    batches = shard_batches(shas, todo, shard_size, batch)
    loader = DataLoader(ShardBatches(root, batches, model.image_size if width else None), batch_size=None, shuffle=False,
                        num_workers=workers, pin_memory=device.type == "cuda",
                        prefetch_factor=4 if workers else None)
    bar = None
    if progress and denv.is_main:
        from arm.progress import progress_bar

        bar = progress_bar(f"tokenize (rank 0 of {denv.world_size})", sum(len(b[2]) for b in batches), unit="img",
                           logger=logger or log)
    t0 = time.perf_counter()
    encoded, t_encode = _encode_shards(model, loader, shas, shard_size, width, shards_dir, device, bar)
    wall = time.perf_counter() - t0
    if bar is not None:
        bar.close()
    ranks = _gather({"rank": denv.rank, "shards": len(mine), "shards_encoded": len(todo), "images_encoded": encoded,
                     "encode_seconds": round(t_encode, 3), "wall_seconds": round(wall, 3)}, denv.world_size)
    if denv.is_main:
        _write_index_and_manifest(cfg, df, shas, out, model, model_dir, tok_fp, run_fp, n_shards, ranks, device, workers)
    dist.barrier()  # the manifest is on disk for every rank
    manifest = json.loads((out / MANIFEST_FILE).read_text())
    if denv.is_main:
        say(f"tokenized {len(shas)} images ({manifest['images_encoded']} encoded by {denv.world_size} process(es), "
            f"{manifest['shards_reused']} shard(s) reused) into {out}")
    return manifest


def _write_index_and_manifest(cfg, df: pd.DataFrame, shas: list[str], out: Path, model, model_dir: Path, tok_fp: str,
                              run_fp: str, n_shards: int, ranks: list[dict], device: torch.device, workers: int) -> None:
    grids = [tuple(g) for g in model.grids]
    tokens_of = _tokens_per_image(out, n_shards) if len(grids) > 1 else None
    width = model.grid[0] * model.grid[1]
    row = {s: i for i, s in enumerate(shas)}
    index = pd.DataFrame({
        "id": df["id"].astype(str),
        "split": df["split"].astype(str),
        "task": df["task"].astype(str),
        "image_sha": df["image_sha"],
        "source_image_sha": df["source_image_sha"],
        "image_row": df["image_sha"].map(row).astype("Int64"),
        "source_image_row": df["source_image_sha"].map(row).astype("Int64"),
    })
    with atomic_path(out / INDEX_FILE) as tmp:
        index.to_parquet(tmp, index=False)

    counts: dict[str, dict[str, dict[str, int]]] = {}
    for (split, task), g in index.groupby(["split", "task"], sort=True):
        n_img = int(g["image_row"].notna().sum() + g["source_image_row"].notna().sum())
        if tokens_of is None:
            n_tok = n_img * width
        else:
            used = pd.concat([g["image_row"], g["source_image_row"]]).dropna().astype(int)
            n_tok = int(tokens_of[used.to_numpy()].sum())
        counts.setdefault(split, {})[task] = {"samples": len(g), "images": n_img, "image_tokens": n_tok}
    encoded = sum(r["images_encoded"] for r in ranks)
    # The stage's speed: every rank's images over the slowest rank's loop (decode included).
    wall = max(r["wall_seconds"] for r in ranks)
    manifest = {
        "format": FORMAT,
        "tokenizer_dir": str(model_dir),
        "tokenizer_fingerprint": tok_fp,
        "run_fingerprint": run_fp,
        "grid": list(model.grid),
        **({"grids": [list(g) for g in grids]} if len(grids) > 1 else {}),
        "levels": model.levels,
        "codebook_size": model.codebook_size,
        "tokens_per_image": width,  # at the default grid
        "images": len(shas),
        "samples": len(index),
        "shards": n_shards,
        "shard_size": cfg.tokenizer.tokens.shard_size,
        "shards_reused": n_shards - sum(r["shards_encoded"] for r in ranks),
        "images_encoded": encoded,
        "world_size": len(ranks),
        "device": device.type,
        "precision": "bf16" if device.type == "cuda" else "fp32",
        "loader_workers": workers,
        "encode_seconds": round(sum(r["encode_seconds"] for r in ranks), 3),
        "wall_seconds": round(wall, 3),
        "images_per_second": round(encoded / wall, 1) if encoded and wall > 0 else None,
        "per_rank": ranks,
        "by_split_task": counts,
    }
    atomic_write_json(out / MANIFEST_FILE, manifest)
    atomic_write_json(cfg.tokenizer.tokens.metrics, {k: v for k, v in manifest.items() if k not in ("tokenizer_dir",)})


def _tokens_per_image(out: Path, n_shards: int) -> np.ndarray:
    """Codes per image in row order, read off the shards' grid column (per-image grids only)."""
    parts = [pq.read_table(out / SHARDS_DIR / shard_name(k), columns=["grid"]).column("grid") for k in range(n_shards)]
    grids = np.concatenate([c.combine_chunks().flatten().to_numpy().reshape(-1, 2) for c in parts])
    return grids[:, 0].astype(np.int64) * grids[:, 1]


class TokenStore:
    """Read access to the tokenize stage's output (for pretraining, RL and evaluation)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        mpath = self.root / MANIFEST_FILE
        if not mpath.is_file():
            raise FileNotFoundError(f"no image tokens at {self.root} ({MANIFEST_FILE} missing; run `arm tokenize`)")
        self.manifest = json.loads(mpath.read_text())
        self.grid = tuple(self.manifest["grid"])
        self.grids = [tuple(g) for g in self.manifest.get("grids", [self.grid])]
        self._codes: torch.Tensor | None = None
        self._shas: list[str] | None = None

    def index(self, split: str | None = None, task: str | None = None) -> pd.DataFrame:
        df = pd.read_parquet(self.root / INDEX_FILE)
        if split is not None:
            df = df[df["split"] == split]
        if task is not None:
            df = df[df["task"] == task]
        return df.reset_index(drop=True)

    def image_codes(self) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
        """Every image at its own grid: (shas, flat int32 codes, offsets [n + 1], grids [n, 2]);
        image i's codes are flat[offsets[i]:offsets[i + 1]], row-major over grids[i]."""
        if len(self.grids) == 1:
            shas, codes = self.all_codes()
            n, (h, w) = len(shas), self.grid
            return (shas, codes.reshape(-1).numpy().astype(np.int32), np.arange(n + 1, dtype=np.int64) * h * w,
                    np.tile(np.array([h, w], dtype=np.int64), (n, 1)))
        shas, flats, grids = [], [], []
        for k in range(self.manifest["shards"]):
            t = pq.read_table(self.root / SHARDS_DIR / shard_name(k))
            shas += t.column("image_sha").to_pylist()
            flats.append(t.column("codes").combine_chunks().flatten().to_numpy().astype(np.int32))
            grids.append(t.column("grid").combine_chunks().flatten().to_numpy().astype(np.int64).reshape(-1, 2))
        grid = np.concatenate(grids) if grids else np.zeros((0, 2), dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(grid[:, 0] * grid[:, 1])])
        return shas, np.concatenate(flats) if flats else np.zeros(0, dtype=np.int32), offsets, grid

    def _load(self) -> None:
        if self._codes is not None:
            return
        if len(self.grids) > 1:
            raise ValueError(f"{self.root}: images have per-image grids {self.grids}; read them with image_codes()")
        shas, parts = [], []
        for k in range(self.manifest["shards"]):
            t = pq.read_table(self.root / SHARDS_DIR / shard_name(k))
            shas += t.column("image_sha").to_pylist()
            width = t.schema.field("codes").type.list_size
            flat = t.column("codes").combine_chunks().flatten().to_numpy()
            parts.append(torch.from_numpy(flat.astype(np.int64)).view(-1, width))
        self._shas = shas
        self._codes = torch.cat(parts).view(-1, *self.grid) if parts else torch.empty(0, *self.grid, dtype=torch.long)

    def all_codes(self) -> tuple[list[str], torch.Tensor]:
        """(shas in row order, LongTensor [n_images, h, w]); `image_row` in the index points here."""
        self._load()
        return list(self._shas), self._codes

    def codes(self, shas: list[str]) -> torch.Tensor:
        self._load()
        where = {s: i for i, s in enumerate(self._shas)}
        missing = [s for s in shas if s not in where]
        if missing:
            raise KeyError(f"{len(missing)} image(s) not tokenized in {self.root}: {missing[:3]}")
        return self._codes[[where[s] for s in shas]]
