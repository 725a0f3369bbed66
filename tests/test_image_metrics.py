"""One image-metrics module (issue 16, item 2): the tokenizer's held-out evaluation and the
benchmark report the same PSNR, SSIM and code statistics for the same reconstructions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from arm.eval.image_metrics import PSNR_CAP, code_stats, reconstruction_metrics, reconstruction_scores
from arm.eval.scoring import score_tokenizer
from arm.tokenizer import metrics as tokenizer_metrics
from arm.tokenizer.images import to_pixels


def photos(n: int, side: int, seed: int = 0) -> torch.Tensor:
    """n smooth 8-bit RGB images [n, 3, side, side] (blurred noise: SSIM has structure to see)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (n, side // 4, side // 4, 3), dtype=np.uint8)
    ims = [np.array(Image.fromarray(a).resize((side, side), Image.Resampling.BICUBIC)) for a in small]
    return torch.from_numpy(np.stack(ims)).permute(0, 3, 1, 2).contiguous()


def to_pil(x: torch.Tensor) -> list[Image.Image]:
    return [Image.fromarray(a.permute(1, 2, 0).numpy()) for a in x]


def noisy(x: torch.Tensor, level: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (x.int() + torch.randint(-level, level + 1, x.shape, generator=g)).clamp(0, 255).to(torch.uint8)


def test_the_tokenizer_evaluation_and_the_benchmark_report_the_same_numbers():
    target = photos(4, 48)
    recon = noisy(target, 12)
    assert tokenizer_metrics.reconstruction_metrics is reconstruction_metrics  # one definition, re-used
    assert tokenizer_metrics.code_stats is code_stats
    ours = tokenizer_metrics.reconstruction_metrics(recon, target)
    bench, per_sample = score_tokenizer(to_pil(recon), to_pil(target))
    assert bench["psnr"] == pytest.approx(ours["psnr"], abs=1e-9)
    assert bench["ssim"] == pytest.approx(ours["ssim"], abs=1e-9)
    psnr, ssim = reconstruction_scores(recon, target)
    assert [s["psnr"] for s in per_sample] == pytest.approx(psnr.tolist())
    assert [s["ssim"] for s in per_sample] == pytest.approx(ssim.tolist())


def test_the_benchmark_scores_against_the_pixels_the_tokenizer_was_given():
    # originals as a user hands them: transparent RGBA (black under the alpha) and 16-bit grey;
    # the tokenizer sees them on white and scaled, so a perfect reconstruction is what it saw
    rgba = Image.new("RGBA", (16, 16), (0, 0, 0, 0))
    rgba.paste((200, 30, 30, 255), (0, 0, 8, 16))
    grey16 = Image.fromarray(np.full((16, 16), 32768, dtype=np.uint16))
    seen = [Image.fromarray((to_pixels([im], 16)[0] * 255).round().byte().permute(1, 2, 0).numpy())
            for im in (rgba, grey16)]
    assert seen[0].getpixel((12, 3)) == (255, 255, 255) and seen[1].getpixel((3, 3)) == (128, 128, 128)
    summary, per_sample = score_tokenizer(seen, [rgba, grey16])
    assert [s["psnr"] for s in per_sample] == [PSNR_CAP, PSNR_CAP] and summary["ssim"] == pytest.approx(1.0, abs=1e-5)


def test_psnr_convention_data_range_1_per_image_mean_and_finite_cap():
    target = photos(3, 16)
    # every value one level off in image 0, five levels in image 1, perfect image 2
    recon = target.clone().int()
    recon[0] = torch.where(target[0] < 255, target[0].int() + 1, target[0].int() - 1)
    recon[1] = torch.where(target[1] < 250, target[1].int() + 5, target[1].int() - 5)
    psnr, _ = reconstruction_scores(recon.to(torch.uint8), target)
    assert psnr[0].item() == pytest.approx(20 * math.log10(255), rel=1e-5)  # MSE of (1/255)^2
    assert psnr[1].item() == pytest.approx(20 * math.log10(255 / 5), rel=1e-5)
    assert psnr[2].item() == PSNR_CAP == 100.0  # +inf, capped so that means and JSON stay finite
    mean = reconstruction_metrics(recon.to(torch.uint8), target)["psnr"]
    assert mean == pytest.approx(float(psnr.mean()))  # a mean of per-image values, not of pooled MSE


def test_ssim_is_torchmetrics_gaussian_window_of_sigma_1_5():
    from torchmetrics.functional.image import structural_similarity_index_measure as ssim_fn

    target = photos(2, 48)
    recon = noisy(target, 30)
    _, ssim = reconstruction_scores(recon, target)
    r, t = recon.float() / 255, target.float() / 255
    reference = ssim_fn(r, t, data_range=1.0, reduction="none", gaussian_kernel=True, sigma=1.5)
    assert torch.allclose(ssim, reference)
    assert 0.2 < float(ssim.mean()) < 0.99
    _, perfect = reconstruction_scores(target, target)
    assert torch.allclose(perfect, torch.ones(2), atol=1e-6)
    # the smallest image the window's reflect padding allows, and one pixel less
    assert reconstruction_scores(recon[:, :, :6, :6].contiguous(), target[:, :, :6, :6].contiguous())[1].shape == (2,)
    with pytest.raises(ValueError, match="5x5 are too small for SSIM"):
        reconstruction_scores(recon[:, :, :5, :5].contiguous(), target[:, :, :5, :5].contiguous())


def test_benchmark_resizes_reconstructions_to_their_originals():
    target = photos(2, 32)
    big = [im.resize((64, 64), Image.Resampling.NEAREST) for im in to_pil(target)]
    summary, _ = score_tokenizer(big, to_pil(target))
    assert 30 < summary["psnr"] < PSNR_CAP  # close to, but not exactly, the original


def test_code_usage_and_perplexity():
    s = code_stats(torch.tensor([[0, 0], [1, 2]]), 8)
    assert s["code_usage"] == 3 / 8 and s["codes_used"] == 3 and s["codebook_size"] == 8
    # frequencies 1/2, 1/4, 1/4: entropy 1.5 bits -> 2^1.5 codes in effective use
    assert s["code_perplexity"] == pytest.approx(2**1.5)
    assert code_stats(np.arange(16).reshape(4, 4), 16)["code_perplexity"] == pytest.approx(16.0)
    summary, _ = score_tokenizer(to_pil(photos(1, 16)), to_pil(photos(1, 16)), codes=[[0, 0], [1, 2]], codebook_size=8)
    assert summary["code_usage"] == s["code_usage"] and summary["code_perplexity"] == s["code_perplexity"]


@pytest.mark.parametrize("codes, size, words", [
    (torch.tensor([0, 8]), 8, "outside [0, 8)"),
    (torch.tensor([-1, 2]), 8, "outside [0, 8)"),
    (torch.tensor([0.0, 1.0]), 8, "integer"),
    (torch.tensor([], dtype=torch.long), 8, "no codes"),
    (torch.tensor([0, 1]), 0, "codebook_size"),
])
def test_bad_codes_are_named(codes, size, words):
    with pytest.raises(ValueError, match=words.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        code_stats(codes, size)


def test_bad_images_are_named():
    t = photos(2, 16)
    with pytest.raises(ValueError, match="reconstructions: expected uint8"):
        reconstruction_metrics(t.float(), t)
    with pytest.raises(ValueError, match="differ in shape"):
        reconstruction_metrics(t[:1], t)
    with pytest.raises(ValueError, match="no images"):
        reconstruction_metrics(t[:0], t[:0])
