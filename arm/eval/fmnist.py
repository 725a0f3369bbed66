"""The Fashion-MNIST judge: a small classifier trained in the eval stage on the train split.

It scores class-conditional generations (is the image recognisably the prompted class?) and
gives the understanding reconstruction reference (what a reader of the tokenized image could know). Trained
deterministically from its settings, cached by a hash of them and of the data files.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import nn

from arm.data.sources import SourceError
from arm.data.sources.fashion_mnist import CLASSES, read_idx
from arm.eval.config import FmnistEvalConfig
from arm.io import atomic_path, atomic_write_json, sha256_file

SIDE = 28


def load_split(root: str | Path, subset: str, limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(N, 28, 28) uint8 images and (N,) int64 labels of `subset` (train or t10k)."""
    root = Path(root)
    images = root / f"{subset}-images-idx3-ubyte.gz"
    labels = root / f"{subset}-labels-idx1-ubyte.gz"
    for f in (images, labels):
        if not f.is_file():
            raise SourceError(f"Fashion-MNIST {subset}: {f} not found (install dataset-fashion-mnist or set eval.fmnist.root)")
    x, y = read_idx(images, labels, limit)
    return x, y.astype(np.int64)


def _build(kind: str) -> nn.Module:
    if kind == "logreg":
        return nn.Sequential(nn.Flatten(), nn.Linear(SIDE * SIDE, len(CLASSES)))
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Dropout(0.2), nn.Linear(32 * 7 * 7, len(CLASSES)),
    )


def preprocess(images: Sequence[Image.Image] | np.ndarray) -> tuple[torch.Tensor, np.ndarray]:
    """Any images -> ([N, 1, 28, 28] in [0, 1], pixel std on 0-255 per image).

    Generated images come back at the tokenizer's size, in RGB, maybe on a light background:
    they are greyed, resized, and inverted when their border is brighter than their middle, so
    the classifier always sees Fashion-MNIST's light-garment-on-dark polarity.
    """
    if isinstance(images, np.ndarray):
        arr = images.astype(np.float32)
    else:
        arr = np.stack([
            np.asarray(im.convert("L").resize((SIDE, SIDE), Image.BILINEAR) if im.size != (SIDE, SIDE)
                       else im.convert("L"), dtype=np.float32)
            for im in images
        ])
    if arr.ndim != 3 or arr.shape[1:] != (SIDE, SIDE):
        raise ValueError(f"fmnist: expected images of {SIDE}x{SIDE} after resizing, got array {arr.shape}")
    std = arr.reshape(len(arr), -1).std(axis=1)
    border = np.concatenate([arr[:, 0], arr[:, -1], arr[:, :, 0], arr[:, :, -1]], axis=1).mean(axis=1)
    centre = arr[:, 7:21, 7:21].reshape(len(arr), -1).mean(axis=1)
    flip = border > centre
    arr[flip] = 255.0 - arr[flip]
    return torch.from_numpy(arr / 255.0).unsqueeze(1), std


@dataclass
class FmnistJudge:
    model: nn.Module
    min_pixel_std: float
    test_accuracy: float

    @torch.no_grad()
    def predict(self, images: Sequence[Image.Image] | np.ndarray, batch_size: int = 512) -> np.ndarray:
        """Class index per image; -1 for a blank image (nothing there to recognise)."""
        if len(images) == 0:
            return np.zeros(0, dtype=np.int64)
        x, std = preprocess(images)
        self.model.eval()
        out = torch.cat([self.model(x[i : i + batch_size]).argmax(-1) for i in range(0, len(x), batch_size)])
        pred = out.numpy().astype(np.int64)
        pred[std < self.min_pixel_std] = -1
        return pred

    @torch.no_grad()
    def features(self, images: Sequence[Image.Image] | np.ndarray, batch_size: int = 512) -> torch.Tensor:
        """Penultimate activations [N, D] (what the last linear layer reads), after the same
        `preprocess` as `predict`: the embedding FID/KID compare (arm/eval/fid.py)."""
        x, _ = preprocess(images)
        self.model.eval()
        body = self.model[:-1]
        return torch.cat([body(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])


def _key(cfg: FmnistEvalConfig) -> str:
    fields = cfg.model_dump(exclude={"cache_dir", "root", "min_pixel_std"})
    root = Path(cfg.root)
    fields["data"] = [sha256_file(root / f"{s}-labels-idx1-ubyte.gz") for s in ("train", "t10k")]
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


def train_judge(cfg: FmnistEvalConfig) -> FmnistJudge:
    """Deterministic from (settings, data): fixed seed, fixed shuffling, one thread.

    One thread on purpose: these matmuls are too small to share, and on a busy machine two
    contending threads ran ~10x slower than one (measured: 8.5 s vs 0.5 s for the micro judge).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train_judge(cfg)
    finally:
        torch.set_num_threads(threads)


def _train_judge(cfg: FmnistEvalConfig) -> FmnistJudge:
    x, y = load_split(cfg.root, "train", cfg.train_limit)
    xt, yt = load_split(cfg.root, "t10k")
    gen = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    model = _build(cfg.classifier)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=1e-4)
    xs = torch.from_numpy(x.astype(np.float32) / 255.0).unsqueeze(1)
    ys = torch.from_numpy(y)
    model.train()
    for _ in range(cfg.epochs):
        order = torch.randperm(len(xs), generator=gen)
        for i in range(0, len(xs), cfg.batch_size):
            idx = order[i : i + cfg.batch_size]
            loss = F.cross_entropy(model(xs[idx]), ys[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    judge = FmnistJudge(model, cfg.min_pixel_std, 0.0)
    judge.test_accuracy = float((judge.predict(xt) == yt).mean())
    return judge


def load_or_train(cfg: FmnistEvalConfig) -> FmnistJudge:
    """The cached judge for these settings, training (and caching) it on first use."""
    folder = Path(cfg.cache_dir) / f"fmnist-{cfg.classifier}-{_key(cfg)}"
    weights, meta = folder / "model.safetensors", folder / "meta.json"
    if weights.is_file() and meta.is_file():
        model = _build(cfg.classifier)
        model.load_state_dict(load_file(str(weights)))
        info = json.loads(meta.read_text())
        return FmnistJudge(model, cfg.min_pixel_std, float(info["test_accuracy"]))
    judge = train_judge(cfg)
    with atomic_path(folder) as tmp:
        tmp.mkdir(parents=True)
        save_file({k: v.contiguous() for k, v in judge.model.state_dict().items()}, str(tmp / "model.safetensors"))
        atomic_write_json(tmp / "meta.json", {"test_accuracy": judge.test_accuracy, "config": cfg.model_dump()})
    return judge


def answer_from_label(question: str, label: int) -> str:
    """What a reader who knows only the class (`label`, -1 for none) answers to a Fashion-MNIST
    question of the curated data; gives the understanding reconstruction reference from the judge's reading."""
    from arm.data.sources.fashion_mnist import GROUPS, PHRASES

    q = " ".join(question.lower().split())
    name = CLASSES[label] if label >= 0 else None
    if q == "what is this?":
        return name or "nothing"
    groups = {"is this a kind of footwear?": "footwear", "is this a top?": "top"}
    if q in groups:
        return "yes" if name in GROUPS[groups[q]] else "no"
    for cls, phrase in PHRASES.items():
        if q == f"is this {phrase}?":
            return "yes" if name == cls else "no"
    raise ValueError(f"question {question!r}: not a Fashion-MNIST question template")
