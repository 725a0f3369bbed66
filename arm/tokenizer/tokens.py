"""The tokenize stage: every curated image encoded once into code shards, plus an index.

Layout under `tokenizer.tokens.output` (default `data/tokens/`):

    shards/codes-00000.parquet   image_sha, codes (fixed-size list of h*w int32), in sha order
    index.parquet                one row per curated sample: id, split, task, image_sha,
                                 source_image_sha, image_row, source_image_row (global code rows)
    manifest.json                tokenizer fingerprint, grid, levels, counts per split/task, speed

Images are deduplicated by sha and sorted, so shard k always holds the same images for the same
store: the output is a pure function of (store, tokenizer). A run writes `run.json` (its
fingerprint) first; a re-run with the same fingerprint keeps the shards that are complete and
encodes only the rest, which is what makes the stage resumable per shard.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch

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


def _shard_table(shas: list[str], codes: np.ndarray) -> pa.Table:
    n, width = codes.shape
    flat = pa.array(codes.reshape(-1).astype(np.int32), type=pa.int32())
    return pa.table({
        "image_sha": pa.array(shas, type=pa.string()),
        "codes": pa.FixedSizeListArray.from_arrays(flat, width),
    })


def _shard_ok(path: Path, shas: list[str], width: int) -> bool:
    """A shard counts as done only if it holds exactly the expected images and code width."""
    try:
        t = pq.read_table(path, columns=["image_sha", "codes"])
    except Exception:
        return False
    return t.column("image_sha").to_pylist() == shas and t.schema.field("codes").type.list_size == width


def tokenize(cfg, *, tokenizer_dir: str | Path | None = None, store_root: str | Path | None = None,
             output: str | Path | None = None, progress: bool = True,
             logger: logging.Logger | None = None) -> dict[str, Any]:
    """Encodes every image of the curated store (image and edit source) once; returns the manifest."""
    from arm.data.store import CuratedStore
    from arm.tokenizer.images import pil_to_uint8
    from arm.tokenizer.model import VisualTokenizer, resolve_device

    say = (logger or log).info
    tcfg = cfg.tokenizer
    model_dir = Path(tokenizer_dir or tcfg.output)
    out = Path(output or tcfg.tokens.output)
    shard_size, batch = tcfg.tokens.shard_size, tcfg.tokens.batch_size
    if tcfg.train.threads:
        torch.set_num_threads(tcfg.train.threads)
    model = VisualTokenizer.from_pretrained(model_dir, device=resolve_device(tcfg.device))
    store = CuratedStore(store_root or cfg.data.store)
    df = store.samples(columns=["id", "split", "task", "image_sha", "source_image_sha"])
    shas = sorted(set(df["image_sha"].dropna()) | set(df["source_image_sha"].dropna()))
    width = model.grid[0] * model.grid[1]

    tok_fp = tokenizer_fingerprint(model_dir)
    run_fp = hashlib.sha256("\n".join([tok_fp, str(shard_size), *shas]).encode()).hexdigest()[:20]
    shards_dir = out / SHARDS_DIR
    run_path = out / RUN_FILE
    previous = json.loads(run_path.read_text()).get("fingerprint") if run_path.is_file() else None
    if previous != run_fp:
        # Another tokenizer or store: nothing on disk can be reused.
        for p in (shards_dir, out / INDEX_FILE, out / MANIFEST_FILE):
            _clear(p)
        atomic_write_json(run_path, {"fingerprint": run_fp, "tokenizer": tok_fp, "images": len(shas)})
    shards_dir.mkdir(parents=True, exist_ok=True)

    n_shards = max(1, math.ceil(len(shas) / shard_size))
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(shas), desc="tokenize", unit="img", dynamic_ncols=True)
    encoded, skipped, t_encode = 0, 0, 0.0
    for k in range(n_shards):
        part = shas[k * shard_size : (k + 1) * shard_size]
        path = shards_dir / shard_name(k)
        if path.is_file() and _shard_ok(path, part, width):
            skipped += 1
            if bar is not None:
                bar.update(len(part))
            continue
        codes = np.zeros((len(part), width), dtype=np.int32)
        for i in range(0, len(part), batch):
            chunk = part[i : i + batch]
            pixels = np.stack([pil_to_uint8(im, model.image_size) for im in store.load_images(chunk)])
            t0 = time.perf_counter()
            c = model.encode(torch.from_numpy(pixels))
            t_encode += time.perf_counter() - t0
            codes[i : i + len(chunk)] = c.reshape(len(chunk), -1).numpy()
            encoded += len(chunk)
            if bar is not None:
                bar.update(len(chunk))
        with atomic_path(path) as tmp:
            pq.write_table(_shard_table(part, codes), tmp)
    if bar is not None:
        bar.close()

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
        counts.setdefault(split, {})[task] = {"samples": len(g), "images": n_img, "image_tokens": n_img * width}
    manifest = {
        "format": FORMAT,
        "tokenizer_dir": str(model_dir),
        "tokenizer_fingerprint": tok_fp,
        "run_fingerprint": run_fp,
        "grid": list(model.grid),
        "levels": model.levels,
        "codebook_size": model.codebook_size,
        "tokens_per_image": width,
        "images": len(shas),
        "samples": len(index),
        "shards": n_shards,
        "shard_size": shard_size,
        "shards_reused": skipped,
        "images_encoded": encoded,
        "encode_seconds": round(t_encode, 3),
        "images_per_second": round(encoded / t_encode, 1) if t_encode > 0 else None,
        "by_split_task": counts,
    }
    atomic_write_json(out / MANIFEST_FILE, manifest)
    atomic_write_json(tcfg.tokens.metrics, {k: v for k, v in manifest.items() if k not in ("tokenizer_dir",)})
    say(f"tokenized {len(shas)} images ({encoded} encoded, {skipped} shard(s) reused) into {out}")
    return manifest


class TokenStore:
    """Read access to the tokenize stage's output (for pretraining, RL and evaluation)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        mpath = self.root / MANIFEST_FILE
        if not mpath.is_file():
            raise FileNotFoundError(f"no image tokens at {self.root} ({MANIFEST_FILE} missing; run `arm tokenize`)")
        self.manifest = json.loads(mpath.read_text())
        self.grid = tuple(self.manifest["grid"])
        self._codes: torch.Tensor | None = None
        self._shas: list[str] | None = None

    def index(self, split: str | None = None, task: str | None = None) -> pd.DataFrame:
        df = pd.read_parquet(self.root / INDEX_FILE)
        if split is not None:
            df = df[df["split"] == split]
        if task is not None:
            df = df[df["task"] == task]
        return df.reset_index(drop=True)

    def _load(self) -> None:
        if self._codes is not None:
            return
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
