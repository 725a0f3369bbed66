"""The flow decoder's part of `arm train-tokenizer` (tokenizer.flow.train).

Trains the rectified-flow decoder (arm/tokenizer/flow_decoder.py) on the frozen codes of the
tokenizer's own training images, saves it as the tokenizer's `flow_decoder/`, and scores both
decoders from the same codes: on Fashion-MNIST t10k (never trained on) FID and KID on the
Fashion-MNIST judge's features (arm/eval/fid.py), PSNR/SSIM and the judge's accuracy beside its
accuracy on the originals; on the shapes val images the oracle's exact-scene rate. The side-by-side
grid (original | per-token | flow) goes to tokenizer.report/decoders.png for the run report.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from arm.tokenizer.data import ImageTextSet
from arm.tokenizer.images import pixels_to_uint8, to_pixels
from arm.tokenizer.model import FLOW_DIR, VisualTokenizer

GRID_FILE = "decoders.png"


def train_flow(model: VisualTokenizer, train: ImageTextSet, cfg, say: Callable[[str], None]):
    """Trains, saves into tokenizer.output/flow_decoder and attaches the decoder to `model`."""
    from arm.tokenizer.flow_decoder import train_flow_decoder

    fcfg = cfg.tokenizer.flow
    # The store's own decoded images, a batch at a time (the trainer keeps codes + uint8 targets).
    batches = (train.pixels(range(i, min(i + fcfg.encode_batch, len(train)))) for i in range(0, len(train), fcfg.encode_batch))
    flow = train_flow_decoder(model, batches, fcfg, log=lambda r: say(
        f"flow decoder: step {r['step']} loss {r['loss']:.4f} ({r['seconds']:.0f} s)"))
    flow.save(Path(cfg.tokenizer.output) / FLOW_DIR)
    model.attach_flow(flow)
    return flow


def compare_decoders(model: VisualTokenizer, val: ImageTextSet | None, cfg) -> dict[str, Any]:
    """Both decoders from the same codes; returns the metrics and writes the grid."""
    from arm.eval.fid import FidKid, JudgeFeatures
    from arm.eval.fmnist import load_or_train, load_split
    from arm.eval.image_metrics import reconstruction_metrics
    from arm.tokenizer.metrics import oracle_accuracy

    fcfg, jcfg = cfg.tokenizer.flow, cfg.eval.fmnist
    judge = load_or_train(jcfg)
    x, labels = load_split(jcfg.root, "t10k", fcfg.eval_images)
    originals = pixels_to_uint8(to_pixels(torch.from_numpy(np.array(x)).unsqueeze(1), model.image_size))
    codes = model.encode(originals)
    metric = FidKid(judge, kid_subset_size=min(100, len(originals)), seed=cfg.seed)
    metric.set_real(originals)

    def accuracy(u8: torch.Tensor) -> float:
        return float((judge.predict(JudgeFeatures.to_pil(u8)) == labels).mean())

    out: dict[str, Any] = {"fmnist_images": len(originals), "originals": {"accuracy": accuracy(originals)}}
    renders: dict[str, torch.Tensor] = {}
    for name in ("per_token", "flow"):
        t = time.perf_counter()
        renders[name] = pixels_to_uint8(model.decode(codes, decoder=name))
        seconds = (time.perf_counter() - t) / len(codes)
        out[name] = {**metric.score(renders[name]), **reconstruction_metrics(renders[name], originals),
                     "accuracy": accuracy(renders[name]), "seconds_per_image": seconds}
        out[name].pop("n", None)
    out["flow"]["fid_ratio_vs_per_token"] = out["flow"]["fid"] / max(out["per_token"]["fid"], 1e-9)
    shapes = val.where(lambda i: val.scenes[i] is not None) if val is not None else None
    shape_rows: dict[str, torch.Tensor] = {}
    if shapes is not None and len(shapes):
        pixels = shapes.pixels(range(len(shapes)))
        shape_codes = model.encode(pixels)
        for name in ("per_token", "flow"):
            shape_rows[name] = pixels_to_uint8(model.decode(shape_codes, decoder=name))
            out[name]["shapes_oracle_scene_accuracy"] = oracle_accuracy(
                shape_rows[name], shapes.scenes, cfg.world)["oracle_scene_accuracy"]
        shape_rows["original"] = pixels
    out["flow_training"] = dict(model.flow_decoder().train_info)
    _write_grid(Path(cfg.tokenizer.report) / GRID_FILE, originals, renders, labels, shape_rows)
    return out


def _write_grid(path: Path, originals, renders, labels, shape_rows, shapes_shown: int = 3) -> None:
    """One row per Fashion-MNIST class (its first t10k image), then a few shapes images."""
    from PIL import Image

    from arm.eval.report import grid_image
    from arm.eval.run import Grid
    from arm.io import atomic_path

    def pil(u8: torch.Tensor) -> Image.Image:
        return Image.fromarray(u8.permute(1, 2, 0).numpy())

    grid = Grid("decoders", ["original", "per-token", "flow"])
    for c in range(10):
        hits = np.flatnonzero(labels == c)
        if len(hits):
            i = int(hits[0])
            grid.rows.append([(pil(originals[i]), None), (pil(renders["per_token"][i]), None), (pil(renders["flow"][i]), None)])
    for i in range(min(shapes_shown, len(shape_rows.get("original", [])))):
        grid.rows.append([(pil(shape_rows[k][i]), None) for k in ("original", "per_token", "flow")])
    with atomic_path(path) as tmp:
        grid_image(grid).save(tmp, format="PNG")
