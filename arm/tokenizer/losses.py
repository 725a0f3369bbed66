"""The tokenizer's losses. Each returns a scalar; the trainer weights them (params.yaml `tokenizer.loss`).

Under bf16 autocast the model's outputs arrive in bf16; every loss reduces in fp32 (`.float()`
is free on fp32 inputs), so a small error is not rounded away before it is averaged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from arm.tokenizer.vocab import PAD


def reconstruction(recon: torch.Tensor, target: torch.Tensor, patch: int, eps: float = 1e-4) -> dict[str, torch.Tensor]:
    """L1, L2 and the mean per-patch log-MSE (= -PSNR * ln(10) / 10 + const, per token cell).

    Plain L1/L2 are dominated by the patches that reconstruct worst (textured photos), so a
    small shape on a white cell stops improving once it is roughly the right colour blob;
    log-MSE weights every patch by the inverse of its own error, so a cell whose kind or size
    is wrong costs as much as a badly drawn photo. `eps` caps the reward at 40 dB, past which
    an 8-bit image cannot improve.
    """
    err = recon.float() - target
    sq = F.avg_pool2d(err.pow(2).mean(1, keepdim=True), patch)  # [B, 1, h, w]: MSE per token cell
    return {"l1": err.abs().mean(), "l2": sq.mean(), "log_mse": (sq + eps).log().mean()}


def scene(logits: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of each token's cell class: logits [B, T, C], classes [B, T]."""
    return F.cross_entropy(logits.flatten(0, 1).float(), states.flatten())


def _unit(f: torch.Tensor) -> torch.Tensor:
    return f / (f.pow(2).sum(1, keepdim=True).sqrt() + 1e-6)


def perceptual(recon_feats: dict[int, torch.Tensor], target_feats: dict[int, torch.Tensor]) -> torch.Tensor:
    """LPIPS-style distance in the frozen teacher's feature space: channel-normalised features,
    squared difference summed over channels, averaged over positions and layers."""
    terms = [(_unit(recon_feats[k].float()) - _unit(target_feats[k].detach().float())).pow(2).sum(1).mean()
             for k in recon_feats]
    return torch.stack(terms).mean()


def pool_to_grid(feats: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Teacher map [B, C, H, W] -> [B, h*w, C] on the token grid."""
    if tuple(feats.shape[-2:]) != tuple(grid):
        feats = F.adaptive_avg_pool2d(feats, grid)
    return feats.flatten(2).transpose(1, 2)


def distillation(pred: torch.Tensor, teacher_tokens: torch.Tensor) -> torch.Tensor:
    """1 - cosine between the distillation head's output and the teacher's features, per token."""
    return (1.0 - F.cosine_similarity(pred.float(), teacher_tokens.detach().float(), dim=-1)).mean()


def sigmoid_contrastive(
    image_emb: torch.Tensor, text_emb: torch.Tensor, text_ids: torch.Tensor, logit_scale: torch.Tensor, logit_bias: torch.Tensor
) -> torch.Tensor:
    """SigLIP loss (Zhai et al. 2023) over all image-text pairs of the batch.

    Pairs whose texts are identical count as positives: many images share a caption (a class
    name, an empty picture), and calling those negatives would push apart what should match.
    """
    logits = (image_emb @ text_emb.T).float() * logit_scale.exp() + logit_bias
    labels = (text_ids[:, None] == text_ids[None, :]).float() * 2.0 - 1.0
    return -F.logsigmoid(labels * logits).sum() / image_emb.shape[0]


def caption(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Next-word cross-entropy; padding is ignored."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1), ignore_index=PAD)


def code_usage(soft_levels: list[torch.Tensor], max_tokens: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Entropy regulariser against codebook collapse (MAGVIT-v2's LFQ entropy loss, for FSQ):
    mean per-token entropy of the soft code assignment (low: each token commits to a code)
    minus the entropy of the batch-average assignment (high: the batch spreads over codes).

    The soft assignment factorises over FSQ dimensions, so the joint distribution over codes is
    the outer product of the per-dimension ones; at most `max_tokens` tokens enter the average.
    """
    flat = [p.reshape(-1, p.shape[-1]).float() for p in soft_levels]
    n = flat[0].shape[0]
    if n > max_tokens:
        pick = torch.randperm(n, generator=generator)[:max_tokens].to(flat[0].device)
        flat = [p[pick] for p in flat]
    eps = 1e-8
    per_token = sum(-(p * (p + eps).log()).sum(-1) for p in flat).mean()
    joint = flat[0]
    for p in flat[1:]:
        joint = (joint.unsqueeze(-1) * p.unsqueeze(1)).reshape(joint.shape[0], -1)
    avg = joint.mean(0)
    return per_token + (avg * (avg + eps).log()).sum()


def latent_bound(z: torch.Tensor, margin: float) -> torch.Tensor:
    """Keeps pre-quantization latents where FSQ's tanh still has a gradient: a token pushed far
    past the outer level is stuck there (the failure seen early in training, when every token
    rushes to the code that decodes to the background)."""
    return torch.relu(z.float().abs() - margin).pow(2).mean()
