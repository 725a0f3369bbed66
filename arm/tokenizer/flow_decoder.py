"""A rectified-flow pixel decoder: an alternative to the tokenizer's per-token PixelDecoder.

The per-token decoder renders each code as a fixed patch, so a code can only draw the mean of
every patch it stands for (blurry, ~13 dB on Fashion-MNIST). This decoder instead *samples*
pixels given the whole code grid, as the ARM paper's diffusion pixel decoder does: a small
diffusers U-Net is trained with the rectified-flow objective on the frozen tokenizer's codes, and
sampled with diffusers' FlowMatchEulerDiscreteScheduler in a configurable number of Euler steps.

Conditioning (frozen, from the codes only): the tokenizer's contextual features F = features(q)
of the token grid, projected by a learned 1x1 conv and upsampled (nearest: a token covers its
patch) to pixel resolution, concatenated to the noisy image as extra channels; optionally also
the per-token decoder's own rendering, so the flow only has to learn what that one misses.

Convention (diffusers' flow matching): x_sigma = (1 - sigma) * x0 + sigma * noise with sigma in
[0, 1], the network predicts the velocity noise - x0 and sees the timestep sigma * 1000, which is
what FlowMatchEulerDiscreteScheduler.step integrates (x += (sigma_next - sigma) * v).
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import FlowMatchEulerDiscreteScheduler, UNet2DModel
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import nn

from arm.io import atomic_path, atomic_write_json, read_saved_config
from arm.tokenizer.config import FlowDecoderConfig
from arm.tokenizer.images import pixels_to_uint8, to_pixels

FORMAT = "arm-flow-decoder"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
TRAIN_TIMESTEPS = 1000  # the scheduler's timestep scale: the U-Net sees sigma * TRAIN_TIMESTEPS


def tokenizer_fingerprint(tokenizer) -> str:
    """A hash of the tokenizer weights the decoder reads (code -> features and per-token pixels):
    a flow decoder is only valid on top of the tokenizer it was trained with."""
    h = hashlib.sha256()
    for name, t in sorted(tokenizer.state_dict().items()):
        if name.split(".")[0] in {"up", "code_embed", "pos", "post", "post_norm", "pixel_decoder", "fsq"}:
            h.update(name.encode())
            h.update(t.detach().cpu().contiguous().float().numpy().tobytes())
    return h.hexdigest()[:16]


def _tokenizer_spec(tokenizer) -> dict[str, Any]:
    return {
        "image_size": tokenizer.image_size,
        "grid": list(tokenizer.grid),
        "levels": tokenizer.levels,
        "feature_dim": int(tokenizer.up.out_features),
        "fingerprint": tokenizer_fingerprint(tokenizer),
    }


class FlowDecoder(nn.Module):
    """Codes (or quantized vectors) of a frozen VisualTokenizer -> pixels, by a rectified flow.

    The tokenizer is used, never trained or saved: it is held outside the module tree, so the
    state dict (and the safetensors file) holds the flow's own weights only.
    """

    def __init__(self, cfg: FlowDecoderConfig, tokenizer):
        super().__init__()
        self.cfg = cfg
        # A list, so not a registered submodule: not in the optimizer, the state dict or .to();
        # conditioning runs it under no_grad on its own device.
        self._tok = [tokenizer.eval()]
        self.spec = _tokenizer_spec(tokenizer)
        size, n, p = tokenizer.image_size, len(cfg.channels), cfg.patch
        if size % p or (size // p) % 2 ** (n - 1):
            raise ValueError(f"patch {p} and {n} U-Net blocks: the {size}px image must divide by {p} and "
                             f"then by {2 ** (n - 1)}")
        if any(c % cfg.norm_groups for c in cfg.channels):
            raise ValueError(f"norm_groups {cfg.norm_groups} must divide every width in channels {cfg.channels}")
        self.cond_proj = nn.Conv2d(self.spec["feature_dim"], cfg.cond_channels, 1)
        self.unet = UNet2DModel(
            sample_size=size // p,
            in_channels=(3 + (3 if cfg.condition_on_decoder else 0)) * p * p + cfg.cond_channels,
            out_channels=3 * p * p,
            block_out_channels=tuple(cfg.channels),
            layers_per_block=cfg.layers_per_block,
            down_block_types=("DownBlock2D",) * n,
            up_block_types=("UpBlock2D",) * n,
            norm_num_groups=cfg.norm_groups,
            add_attention=cfg.mid_attention,
            attention_head_dim=min(cfg.channels[-1], 32),
        )
        self.history: list[dict[str, float]] = []  # the training loss curve
        self.train_info: dict[str, Any] = {}

    @property
    def tokenizer(self):
        return self._tok[0]

    @property
    def device(self) -> torch.device:
        return self.cond_proj.weight.device

    # ------------------------------------------------------------------ conditioning

    def _quantized(self, codes_or_q: torch.Tensor) -> torch.Tensor:
        if not isinstance(codes_or_q, torch.Tensor):
            codes_or_q = torch.as_tensor(codes_or_q)
        if codes_or_q.is_floating_point():
            q = codes_or_q
            if q.ndim != 3 or q.shape[-1] != len(self.spec["levels"]):
                raise ValueError(f"quantized vectors: expected [B, N, {len(self.spec['levels'])}], got {tuple(q.shape)}")
        else:
            q = self.tokenizer.codes_to_quantized(codes_or_q.to(self.tokenizer.device))
        return q

    def _grid(self, codes_or_q: torch.Tensor, grid: tuple[int, int] | None) -> tuple[int, int]:
        """`grid`, else the grid of codes [B, h, w], else the tokenizer's square."""
        if grid is not None:
            return self.tokenizer.buckets.check(grid)
        if isinstance(codes_or_q, torch.Tensor) and not codes_or_q.is_floating_point():
            return self.tokenizer.codes_grid(codes_or_q)
        return self.tokenizer.grid

    @torch.no_grad()
    def condition(self, codes_or_q: torch.Tensor, grid: tuple[int, int] | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The frozen part of the conditioning: (features F [B, D, h, w], per-token pixels in [-1, 1] or None)."""
        tok = self.tokenizer
        (h, w) = grid = self._grid(codes_or_q, grid)
        q = self._quantized(codes_or_q).to(tok.device)
        feats = tok.features(q, grid).transpose(1, 2).reshape(q.shape[0], -1, h, w).to(self.device)
        base = tok.reconstruct(q, grid).clamp(0, 1).to(self.device) * 2 - 1 if self.cfg.condition_on_decoder else None
        return feats, base

    def velocity(self, x: torch.Tensor, sigma_t: torch.Tensor, feats: torch.Tensor, base: torch.Tensor | None) -> torch.Tensor:
        """The predicted velocity (noise - x0) at x; `sigma_t` is the scheduler timestep sigma * 1000."""
        p = self.cfg.patch
        pixels = torch.cat([x] + ([base] if base is not None else []), 1)
        pixels = F.pixel_unshuffle(pixels, p) if p > 1 else pixels
        cond = F.interpolate(self.cond_proj(feats), size=pixels.shape[-2:], mode="nearest")
        out = self.unet(torch.cat([pixels, cond], 1), sigma_t).sample
        return F.pixel_shuffle(out, p) if p > 1 else out

    # ------------------------------------------------------------------ sampling

    @torch.no_grad()
    def sample(self, codes_or_q: torch.Tensor, steps: int | None = None, generator: torch.Generator | None = None,
               batch_size: int = 256, start: float | None = None, grid: tuple[int, int] | None = None) -> torch.Tensor:
        """Codes [B, h, w] / [B, h*w] (or quantized [B, h*w, L] on `grid`, default the square) ->
        pixels [B, 3, h*patch, w*patch] in [0, 1], on CPU. The U-Net is convolutional, so it
        draws any of the tokenizer's grids (whose pixel sides divide by its downsampling).

        Deterministic for a given generator state (the only randomness is the starting noise,
        drawn on CPU so a seed means the same thing on any device)."""
        steps = steps or self.cfg.sample_steps
        start = self.cfg.sample_start if start is None else start
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        if not 0 < start <= 1:
            raise ValueError(f"start must be in (0, 1], got {start}")
        if generator is None:
            generator = torch.Generator().manual_seed(self.cfg.seed)
        grid = self._grid(codes_or_q, grid)
        height, width = self.tokenizer.buckets.pixel_size(grid)
        unit = self.cfg.patch * 2 ** (len(self.cfg.channels) - 1)
        if height % unit or width % unit:
            raise ValueError(f"grid {grid}: its {height}x{width} px must divide by the flow decoder's patch x "
                             f"downsampling ({unit}) on both sides")
        q = self._quantized(codes_or_q)
        was_training = self.training
        self.eval()
        out = []
        # All the noise at once, so a sample does not depend on batch_size.
        noise = torch.randn(q.shape[0], 3, height, width, generator=generator)
        for i in range(0, q.shape[0], batch_size):
            qb = q[i : i + batch_size]
            feats, base = self.condition(qb, grid)
            x = noise[i : i + batch_size].to(self.device)
            scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=TRAIN_TIMESTEPS, shift=1.0)
            if start < 1:  # the point of the straight path at `start` between the per-token pixels and noise
                drawn = base if base is not None else self.tokenizer.reconstruct(qb.to(self.tokenizer.device), grid).clamp(0, 1).to(self.device) * 2 - 1
                x = (1 - start) * drawn + start * x
                scheduler.set_timesteps(sigmas=np.linspace(start, 1.0 / TRAIN_TIMESTEPS, steps).tolist(), device=self.device)
            else:
                scheduler.set_timesteps(steps, device=self.device)
            for t in scheduler.timesteps:
                v = self.velocity(x, t.expand(x.shape[0]), feats, base)
                x = scheduler.step(v, t, x).prev_sample
            out.append(((x + 1) / 2).clamp(0, 1).cpu())
        self.train(was_training)
        return torch.cat(out)

    # ------------------------------------------------------------------ persistence

    def save(self, directory: str | Path) -> Path:
        """config.json (format, version, settings, tokenizer spec, training summary) + model.safetensors,
        written to a temp dir and renamed into place."""
        directory = Path(directory)
        with atomic_path(directory) as tmp:
            tmp.mkdir(parents=True)
            save_file({k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}, str(tmp / WEIGHTS_FILE))
            atomic_write_json(tmp / CONFIG_FILE, {
                "format": FORMAT, "version": FORMAT_VERSION, "config": self.cfg.model_dump(mode="json"),
                "tokenizer": self.spec, "training": self.train_info, "history": self.history,
            })
        return directory

    @classmethod
    def load(cls, directory: str | Path, tokenizer, *, device: str | torch.device = "cpu") -> "FlowDecoder":
        """A saved decoder on top of `tokenizer` (the one it was trained with: checked), in eval mode."""
        directory = Path(directory)
        weights = directory / WEIGHTS_FILE
        meta = read_saved_config(directory, "flow decoder", FORMAT, FORMAT_VERSION, CONFIG_FILE, WEIGHTS_FILE)
        model = cls(FlowDecoderConfig(**meta["config"]), tokenizer)
        saved, have = meta.get("tokenizer", {}), model.spec
        if saved != have:
            diff = {k: (saved.get(k), have[k]) for k in have if saved.get(k) != have[k]}
            raise ValueError(f"{directory}: trained on another tokenizer (saved vs given: {diff})")
        try:
            model.load_state_dict(load_file(str(weights)))
        except RuntimeError as e:
            raise ValueError(f"{weights}: weights do not match the config: {e}") from None
        model.history = list(meta.get("history", []))
        model.train_info = dict(meta.get("training", {}))
        return model.to(device).eval()


# ---------------------------------------------------------------------- training


def _batches(images: Any, batch: int) -> Iterator[Any]:
    """Chunks of a [N, C, H, W] tensor/array, or of an iterable of PIL images and/or image batches."""
    if isinstance(images, (torch.Tensor, np.ndarray)):
        for i in range(0, len(images), batch):
            yield images[i : i + batch]
        return
    pending: list[Image.Image] = []
    for item in images:
        if isinstance(item, Image.Image):
            pending.append(item)
            if len(pending) == batch:
                yield pending
                pending = []
        else:
            if pending:
                yield pending
                pending = []
            yield item
    if pending:
        yield pending


@torch.no_grad()
def encode_images(tokenizer, images: Any, batch: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes [N, h, w], targets uint8 [N, 3, S, S]): the frozen tokenizer's codes and the pixels
    it saw (its own resize), kept as uint8 so a training set of tens of thousands fits in memory."""
    codes, targets = [], []
    for chunk in _batches(images, batch):
        x = to_pixels(chunk, tokenizer.image_size)
        codes.append(tokenizer.encode(x))
        targets.append(pixels_to_uint8(x))
    if not codes:
        raise ValueError("images: empty training set")
    return torch.cat(codes), torch.cat(targets)


def _sigmas(n: int, kind: str, gen: torch.Generator) -> torch.Tensor:
    if kind == "uniform":
        return torch.rand(n, generator=gen)
    return torch.sigmoid(torch.randn(n, generator=gen))  # logit-normal(0, 1)


def flow_loss(model: FlowDecoder, codes: torch.Tensor, target01: torch.Tensor, gen: torch.Generator,
              kind: str = "uniform") -> torch.Tensor:
    """The rectified-flow loss on one batch: MSE between the predicted and true velocity noise - x0."""
    x0 = (target01.to(model.device) * 2 - 1)
    feats, base = model.condition(codes)
    noise = torch.randn(x0.shape, generator=gen).to(model.device)
    sigma = _sigmas(x0.shape[0], kind, gen).to(model.device)
    s = sigma.view(-1, 1, 1, 1)
    x_t = (1 - s) * x0 + s * noise
    v = model.velocity(x_t, sigma * TRAIN_TIMESTEPS, feats, base)
    return F.mse_loss(v, noise - x0)


def train_flow_decoder(tokenizer, images: Any, cfg: FlowDecoderConfig, *,
                       log: Callable[[dict[str, float]], None] | None = None) -> FlowDecoder:
    """Trains a FlowDecoder on the frozen tokenizer's codes of `images` (a [N, C, H, W] uint8/float
    tensor or array, or an iterable of PIL images or such batches).

    Deterministic from cfg.seed (on one thread); stops at cfg.max_steps or cfg.time_limit_min.
    The loss curve is `model.history`; `model.train_info` says how and how long it trained.
    """
    start = time.perf_counter()
    torch.manual_seed(cfg.seed)
    model = FlowDecoder(cfg, tokenizer)
    codes, targets = encode_images(tokenizer, images, cfg.encode_batch)
    encode_s = time.perf_counter() - start
    n = len(codes)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    # Linear warmup, then constant: a cosine decay over max_steps would be cut short by the time limit.
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(1, cfg.warmup_steps)))
    # An exponential moving average of the weights, kept by hand: torch's AveragedModel would
    # deep-copy the module and with it the tokenizer it holds.
    ema = [p.detach().clone() for p in params] if cfg.ema_decay > 0 else None
    gen = torch.Generator().manual_seed(cfg.seed)
    order, pos = torch.randperm(n, generator=gen), 0
    deadline = start + cfg.time_limit_min * 60 if cfg.time_limit_min else math.inf
    model.train()
    running, step, stopped = 0.0, 0, "max_steps"
    train_start = time.perf_counter()
    while step < cfg.max_steps:
        if time.perf_counter() > deadline:
            stopped = "time_limit"
            break
        if pos + cfg.batch_size > n:
            order, pos = torch.randperm(n, generator=gen), 0
        idx = order[pos : pos + cfg.batch_size]
        pos += cfg.batch_size
        loss = flow_loss(model, codes[idx], targets[idx].float() / 255, gen, cfg.time_sampling)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        sched.step()
        if ema is not None:  # the usual warmup of the decay, so early steps do not keep the init
            decay = min(cfg.ema_decay, (1 + step) / (10 + step))
            with torch.no_grad():
                for p, e in zip(params, ema):
                    e.lerp_(p, 1 - decay)
        step += 1
        running += loss.item()
        if step % cfg.log_every == 0 or step == cfg.max_steps:
            k = step % cfg.log_every or cfg.log_every
            row = {"step": step, "loss": running / k, "lr": sched.get_last_lr()[0],
                   "seconds": time.perf_counter() - start}
            model.history.append(row)
            running = 0.0
            if log:
                log(row)
    if ema is not None:
        with torch.no_grad():
            for p, e in zip(params, ema):
                p.copy_(e)
    model.eval()
    model.train_info = {
        "steps": step, "stopped": stopped, "train_images": n, "encode_seconds": round(encode_s, 2),
        "train_seconds": round(time.perf_counter() - train_start, 2),
        "total_seconds": round(time.perf_counter() - start, 2),
        "params": sum(p.numel() for p in model.parameters()),
    }
    return model
