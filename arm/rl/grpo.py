"""The GRPO objective on image tokens (Shao et al. 2024, DeepSeekMath; as applied to AR image
generation): K samples per prompt, group-normalised advantages, a clipped importance ratio and
a KL penalty to a frozen reference.

Per image-code position t of sample i, with r = exp(logp - logp_old) and A_i its advantage:

    L_it = -min(r * A_i, clip(r, 1 - eps, 1 + eps) * A_i) + beta * KL_it
    KL_it = exp(logp_ref - logp) - (logp_ref - logp) - 1         (the unbiased, >= 0 "k3" estimator)

averaged over the positions of a sample, then over samples. Image spans have a fixed length
(h*w codes), so this is also the token mean. Log-probs are those of the distribution the
sampler draws from: the temperature-scaled softmax over image codes only (the grammar allows
nothing else inside an image span), of the guided logits when rollouts use classifier-free
guidance. They are computed from the final hidden states at the image positions only, pushed
through the LM head in chunks, so [positions x vocabulary] logits are never materialised at
once (the 7b preset's vocabulary has 167k rows).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.checkpoint import checkpoint

from arm.text.vocab import VocabLayout


def group_advantages(rewards: torch.Tensor, scale: bool = True, eps: float = 1e-4) -> torch.Tensor:
    """rewards [G, K] (G prompts, K samples each) -> advantages [G, K]: the reward minus its
    group's mean, divided by the group's (Bessel-corrected) std when `scale`. A group whose
    samples all scored the same carries no signal and gets zeros."""
    if rewards.dim() != 2 or rewards.shape[1] < 2:
        raise ValueError(f"rewards must be [groups, K>=2], got shape {tuple(rewards.shape)}")
    centred = rewards - rewards.mean(1, keepdim=True)
    if not scale:
        return centred
    std = rewards.std(1, keepdim=True)
    return torch.where(std > 0, centred / (std + eps), torch.zeros_like(centred))


@dataclass
class LossParts:
    loss: torch.Tensor
    policy: float  # mean clipped surrogate term (sign as in the loss)
    kl: float  # mean per-token KL to the reference (0 without one)
    clip_fraction: float  # share of tokens where the clipped branch was taken
    ratio_mean: float


def grpo_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    *,
    clip_eps: float,
    beta: float = 0.0,
    ref_logp: torch.Tensor | None = None,
) -> LossParts:
    """logp, old_logp, ref_logp: [N, T] log-probs of the sampled codes; advantages: [N]."""
    if logp.shape != old_logp.shape or logp.dim() != 2:
        raise ValueError(f"logp {tuple(logp.shape)} and old_logp {tuple(old_logp.shape)} must be the same [N, T]")
    if advantages.shape != logp.shape[:1]:
        raise ValueError(f"advantages {tuple(advantages.shape)} must be [N] = [{logp.shape[0]}]")
    if beta > 0 and ref_logp is None:
        raise ValueError("beta > 0 needs the reference log-probs")
    adv = advantages.unsqueeze(1).to(logp.dtype)
    ratio = torch.exp(logp - old_logp.detach())
    unclipped = ratio * adv
    clipped = ratio.clamp(1 - clip_eps, 1 + clip_eps) * adv
    surrogate = torch.minimum(unclipped, clipped)
    per_token = -surrogate
    kl = torch.zeros((), dtype=logp.dtype)
    if beta > 0:
        delta = ref_logp.detach() - logp
        kl_tok = torch.exp(delta) - delta - 1
        per_token = per_token + beta * kl_tok
        kl = kl_tok.mean()
    loss = per_token.mean(1).mean()
    with torch.no_grad():
        clip_frac = (clipped < unclipped).float().mean()
    return LossParts(loss, float(-surrogate.detach().mean()), float(kl.detach()), float(clip_frac), float(ratio.detach().mean()))


# ----------------------------------------------------------------------------- log-probs


def _chunk_logprobs(h: torch.Tensor, head: torch.nn.Module, image: slice, targets: torch.Tensor, temperature: float,
                    h_uncond: torch.Tensor | None = None, cfg_scale: float = 1.0) -> torch.Tensor:
    # The head runs as a module (not as a weight slice) so a ZeRO-3 partitioned head is gathered
    # by its own hooks; only the image columns of the chunk's logits are kept.
    logits = head(h)[:, image].float()
    if h_uncond is not None:
        u = head(h_uncond)[:, image].float()
        logits = u + cfg_scale * (logits - u)  # the sampler's guidance (arm.sample.choose.guide)
    logits = logits / temperature
    return logits.log_softmax(-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def _image_hidden(model, layout: VocabLayout, input_ids, attention_mask, starts) -> tuple[torch.Tensor, torch.Tensor]:
    """Final hidden states before each image code [N, T, d], and the codes [N, T]."""
    n_img = layout.tokens_per_image
    hidden = model.get_decoder()(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
    pos = starts.to(input_ids.device).unsqueeze(1) + torch.arange(n_img, device=input_ids.device)
    if int(pos.max()) >= input_ids.shape[1] or int(starts.min()) < 1:
        raise ValueError("image spans must lie inside the rows and follow a non-empty prompt")
    # the hidden state before a token predicts it
    h = hidden.gather(1, (pos - 1).unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))
    codes = input_ids.gather(1, pos) - layout.image_offset
    if int(codes.min()) < 0 or int(codes.max()) >= layout.codebook_size:
        raise ValueError("a token inside an image span is not an image code")
    return h, codes


def image_logprobs(
    model,
    layout: VocabLayout,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    starts: torch.Tensor,
    *,
    temperature: float = 1.0,
    chunk: int = 512,
    uncond: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
    cfg_scale: float = 1.0,
) -> torch.Tensor:
    """Log-probs [N, h*w] of the image codes of right-padded rows `input_ids` [N, L]; row i's
    codes sit at positions starts[i] .. starts[i] + h*w - 1 (starts[i] = its prompt length).

    With `uncond` = (ids, mask, starts) of the unconditional twins carrying the same codes, the
    log-probs are those of the classifier-free-guided distribution the sampler draws from at
    `cfg_scale`, so RL with guided rollouts stays on-policy (gradients flow through both rows)."""
    h, targets = _image_hidden(model, layout, input_ids, attention_mask, starts)
    hu = None
    if uncond is not None:
        hu, codes_u = _image_hidden(model, layout, *uncond)
        if not torch.equal(codes_u, targets):
            raise ValueError("the unconditional rows must carry the same image codes")
    head = model.get_output_embeddings()
    image = slice(layout.image_offset, layout.vocab_size)
    d = h.shape[-1]
    flat_h, flat_t = h.reshape(-1, d), targets.reshape(-1)
    flat_u = hu.reshape(-1, d) if hu is not None else None
    out = []
    for s in range(0, flat_h.shape[0], chunk):
        sl = slice(s, s + chunk)
        args = (flat_h[sl], head, image, flat_t[sl], temperature, flat_u[sl] if flat_u is not None else None, cfg_scale)
        if torch.is_grad_enabled() and flat_h.requires_grad:
            # recompute the chunk's logits in backward instead of keeping them: memory O(chunk x V)
            out.append(checkpoint(_chunk_logprobs, *args, use_reentrant=False))
        else:
            out.append(_chunk_logprobs(*args))
    return torch.cat(out).view(targets.shape)


class ImageLogprobs(torch.nn.Module):
    """The policy as the module a distributed wrapper (DDP, a DeepSpeed engine) runs: its forward
    is `image_logprobs` of the wrapped causal LM, so every forward of an update goes through the
    wrapper's hooks (ZeRO-3 gathers each layer's shards as it runs) and no [rows x positions x
    vocabulary] logits are ever built."""

    def __init__(self, lm: torch.nn.Module, layout: VocabLayout, temperature: float, chunk: int, cfg_scale: float):
        super().__init__()
        self.lm = lm
        self.layout, self.temperature, self.chunk, self.cfg_scale = layout, temperature, chunk, cfg_scale

    def forward(self, input_ids, attention_mask, starts, uncond=None) -> torch.Tensor:
        return image_logprobs(self.lm, self.layout, input_ids, attention_mask, starts, temperature=self.temperature,
                              chunk=self.chunk, uncond=uncond, cfg_scale=self.cfg_scale)


def build_rows(prompts: list[list[int]], codes: torch.Tensor, layout: VocabLayout) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded (input_ids, attention_mask, starts) of prompt + image codes per row.

    Right padding keeps every real token at position ids 0.. (transformers' default), the same
    positions the sampler gave it after dropping its left padding."""
    if len(prompts) != codes.shape[0]:
        raise ValueError(f"{len(prompts)} prompts but {codes.shape[0]} code rows")
    n_img = layout.tokens_per_image
    width = max(len(p) for p in prompts) + n_img
    ids = torch.full((len(prompts), width), layout.pad, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    starts = torch.tensor([len(p) for p in prompts], dtype=torch.long)
    for i, p in enumerate(prompts):
        row = torch.cat([torch.tensor(p, dtype=torch.long), layout.image_tokens(codes[i].reshape(-1))])
        ids[i, : len(row)] = row
        mask[i, : len(row)] = 1
    return ids, mask, starts
