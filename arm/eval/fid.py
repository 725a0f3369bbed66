"""FID and KID of Fashion-MNIST images, on the Fashion-MNIST judge's features.

Inception weights are not available offline, and an ImageNet network says little about 28 px
greyscale garments anyway; the judge CNN (arm/eval/fmnist.py), trained on Fashion-MNIST, is the
domain's own embedding (the "FID on a domain classifier" practice of MNIST-like benchmarks). Its
penultimate activations feed torchmetrics' FrechetInceptionDistance and
KernelInceptionDistance, which both accept a custom feature module. Numbers are comparable only
between runs with the same judge (its settings key its cache) and the same image count.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torch import nn

from arm.eval.fmnist import SIDE, FmnistJudge
from arm.tokenizer.images import pixels_to_uint8


class JudgeFeatures(nn.Module):
    """Images [N, C, H, W] (uint8, or float in [0, 1]; grey or RGB; any size) -> the judge's
    penultimate activations [N, D], read exactly as `FmnistJudge.predict` reads them."""

    def __init__(self, judge: FmnistJudge):
        super().__init__()
        self.judge = judge
        self.model = judge.model  # registered, so the metric's .to()/eval() reach it
        with torch.no_grad():
            self.num_features = int(self.model.eval()[:-1](torch.zeros(1, 1, SIDE, SIDE)).shape[-1])

    @staticmethod
    def to_pil(images: torch.Tensor) -> list[Image.Image]:
        if images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"images: expected [N, 1 or 3, H, W], got {tuple(images.shape)}")
        x = images.detach().cpu()
        arr = (pixels_to_uint8(x) if x.is_floating_point() else x.to(torch.uint8)).permute(0, 2, 3, 1).numpy()
        return [Image.fromarray(np.ascontiguousarray(a[..., 0] if a.shape[-1] == 1 else a)) for a in arr]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.judge.features(self.to_pil(images))


class FidKid:
    """FID and KID (mean, std over subsets) of image sets against one fixed real set.

        metric = FidKid(judge); metric.set_real(originals)
        metric.score(reconstructions)  # {"fid": ..., "kid_mean": ..., "kid_std": ...}

    The real features are computed once and kept across `score` calls (reset_real_features=False).
    KID's subsets are drawn from a fixed seed, so a score is deterministic.
    """

    def __init__(self, judge: FmnistJudge, *, kid_subset_size: int = 100, kid_subsets: int = 100, seed: int = 0):
        from torchmetrics.image.fid import FrechetInceptionDistance
        from torchmetrics.image.kid import KernelInceptionDistance

        features = JudgeFeatures(judge)
        # One process scores: inside a torchrun world (rank 0 of train-tokenizer) torchmetrics would
        # otherwise all-gather the features from ranks that never call compute, and hang or crash.
        self.fid = FrechetInceptionDistance(feature=features, reset_real_features=False, sync_on_compute=False)
        self.kid = KernelInceptionDistance(feature=features, subsets=kid_subsets, subset_size=kid_subset_size,
                                           reset_real_features=False, sync_on_compute=False)
        self.kid_subset_size, self.seed, self.n_real = kid_subset_size, seed, 0

    def set_real(self, images: torch.Tensor, batch_size: int = 512) -> None:
        self.fid.reset_real_features = self.kid.reset_real_features = True
        self.fid.reset()
        self.kid.reset()
        self.fid.reset_real_features = self.kid.reset_real_features = False
        for i in range(0, len(images), batch_size):
            self.fid.update(images[i : i + batch_size], real=True)
            self.kid.update(images[i : i + batch_size], real=True)
        self.n_real = len(images)

    def score(self, images: torch.Tensor, batch_size: int = 512) -> dict[str, float]:
        if not self.n_real:
            raise RuntimeError("FidKid.score: call set_real first")
        n = min(len(images), self.n_real)
        if n < self.kid_subset_size:
            raise ValueError(f"KID subsets of {self.kid_subset_size} need at least that many images, got {n}")
        self.fid.reset()
        self.kid.reset()
        for i in range(0, len(images), batch_size):
            self.fid.update(images[i : i + batch_size], real=False)
            self.kid.update(images[i : i + batch_size], real=False)
        fid = float(self.fid.compute())
        with torch.random.fork_rng(devices=[]):  # KID draws its subsets with the global RNG
            torch.manual_seed(self.seed)
            kid_mean, kid_std = (float(v) for v in self.kid.compute())
        return {"fid": fid, "kid_mean": kid_mean, "kid_std": kid_std, "n": len(images)}
