"""Reconstruction and codebook metrics: the one definition shared by the tokenizer's held-out
evaluation (arm/tokenizer/metrics.py) and the benchmark (arm/eval/scoring.py).

Conventions:
- Images are uint8 [N, 3, H, W] (8-bit RGB, as the model sees them), scored as float in [0, 1]
  with data_range=1.0.
- PSNR (torchmetrics) per image over all its pixels and channels, then the mean over images.
  A perfect reconstruction has infinite PSNR; it is reported as PSNR_CAP dB so that means stay
  finite and JSON valid. One 8-bit level off in a single value of a 48x48 RGB image is 86.5 dB,
  so the cap lies above every imperfect reconstruction of images up to about 226x226.
- SSIM (torchmetrics) with a Gaussian window of sigma 1.5 (torchmetrics sizes a Gaussian window
  from sigma alone: 11 wide, whatever kernel_size says), per image, then the mean. Images must be
  at least SSIM_MIN_SIDE pixels on a side, as the window's reflect padding needs.
- Code usage: the share of codebook entries used at least once; code perplexity: exp of the
  entropy (nats) of the code frequencies, i.e. how many codes are in effective use.
"""

from __future__ import annotations

import math

import numpy as np
import torch

PSNR_CAP = 100.0
SSIM_SIGMA = 1.5
SSIM_MIN_SIDE = int(3.5 * SSIM_SIGMA + 0.5) + 1  # half the window, plus one: 6


def _check_images(recon: torch.Tensor, target: torch.Tensor) -> None:
    for name, x in (("reconstructions", recon), ("targets", target)):
        if not isinstance(x, torch.Tensor) or x.dtype != torch.uint8 or x.ndim != 4 or x.shape[1] != 3:
            got = f"{x.dtype} {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"{name}: expected uint8 images [N, 3, H, W], got {got}")
    if recon.shape != target.shape:
        raise ValueError(f"reconstructions {tuple(recon.shape)} and targets {tuple(target.shape)} differ in shape")
    if not len(target):
        raise ValueError("no images to score")
    if min(target.shape[-2:]) < SSIM_MIN_SIDE:
        raise ValueError(f"images of {target.shape[-1]}x{target.shape[-2]} are too small for SSIM's window "
                         f"(sigma {SSIM_SIGMA}); need at least {SSIM_MIN_SIDE}x{SSIM_MIN_SIDE}")


def reconstruction_scores(recon_u8: torch.Tensor, target_u8: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image PSNR (dB, capped at PSNR_CAP) and SSIM, each [N]."""
    # imported on use: seconds of import time that every benchmark importing scoring would pay
    from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

    _check_images(recon_u8, target_u8)
    r, t = recon_u8.float() / 255.0, target_u8.float() / 255.0
    psnr = peak_signal_noise_ratio(r, t, data_range=1.0, reduction="none", dim=(1, 2, 3)).clamp(max=PSNR_CAP)
    ssim = structural_similarity_index_measure(r, t, data_range=1.0, reduction="none", gaussian_kernel=True,
                                               sigma=SSIM_SIGMA)
    return psnr, ssim


def reconstruction_metrics(recon_u8: torch.Tensor, target_u8: torch.Tensor) -> dict[str, float]:
    """Mean PSNR (dB) and SSIM over images."""
    psnr, ssim = reconstruction_scores(recon_u8, target_u8)
    return {"psnr": float(psnr.mean()), "ssim": float(ssim.mean())}


def code_stats(codes: torch.Tensor | np.ndarray, codebook_size: int) -> dict[str, float]:
    """Usage and perplexity of the codebook over `codes` (integer ids, any shape)."""
    if not codebook_size or codebook_size < 1:
        raise ValueError(f"codebook_size must be a positive integer, got {codebook_size!r}")
    flat = torch.as_tensor(np.asarray(codes)).flatten()
    if flat.is_floating_point() or flat.is_complex() or flat.dtype == torch.bool:
        raise ValueError(f"codes must be integer ids, got {flat.dtype}")
    if not flat.numel():
        raise ValueError("no codes to count")
    lo, hi = int(flat.min()), int(flat.max())
    if lo < 0 or hi >= codebook_size:
        raise ValueError(f"codes outside [0, {codebook_size}): found values in [{lo}, {hi}]")
    # Written out: torchmetrics' perplexity is over a model's logits, not over observed frequencies.
    counts = torch.bincount(flat.long(), minlength=codebook_size).double()
    p = counts[counts > 0] / counts.sum()
    used = int((counts > 0).sum())
    return {
        "code_usage": used / codebook_size,
        "code_perplexity": math.exp(float(-(p * p.log()).sum())),
        "codes_used": used,
        "codebook_size": codebook_size,
    }
