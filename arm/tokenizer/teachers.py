"""Frozen teachers: targets of the feature-distillation loss and the space of the perceptual loss.

`features` runs the teacher `chunk` images at a time. With `checkpoint`, each chunk of a pass
that needs gradients (the perceptual loss reaches the reconstruction through the frozen
teacher) keeps only its input and is recomputed in the backward: the saved activations are one
chunk's, not the whole batch's at every layer (hundreds of GB for SigLIP-so400m at batch 256).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint as recompute

from arm.tokenizer.config import TeacherConfig


class Teacher(nn.Module):
    """`features(images01)` -> {layer: [B, C, h, w]}; never trained (eval mode, no grads to its weights).

    Built for the tokenizer's square token grid; `grid` in `features` names another (an aspect
    bucket's), which the teacher then sees at that grid's shape."""

    distill_layer: int
    perceptual_layers: list[int]
    distill_dim: int

    def layers(self) -> list[int]:
        return sorted({self.distill_layer, *self.perceptual_layers})

    def features(self, images01: torch.Tensor, layers: list[int] | None = None, *, chunk: int | None = None,
                 checkpoint: bool = False, grid: tuple[int, int] | None = None) -> dict[int, torch.Tensor]:
        """The requested layers' maps of images on token grid `grid` (None: the square), `chunk`
        images per forward (None: all at once); `checkpoint` recomputes each chunk in the backward
        instead of keeping its activations."""
        layers = layers or self.layers()
        step = chunk or len(images01)
        grad = checkpoint and torch.is_grad_enabled() and images01.requires_grad
        parts = []
        for x in images01.split(step):
            if grad:
                maps = recompute(self._features, x, layers, grid, use_reentrant=False)
            else:
                maps = self._features(x, layers, grid)
            parts.append(maps)
        if len(parts) == 1:
            return parts[0]
        return {k: torch.cat([p[k] for p in parts]) for k in layers}

    def _features(self, images01: torch.Tensor, layers: list[int], grid: tuple[int, int] | None
                  ) -> dict[int, torch.Tensor]:
        raise NotImplementedError

    def train(self, mode: bool = True) -> "Teacher":
        return super().train(False)  # BatchNorm statistics and dropout stay frozen


class EfficientNetTeacher(Teacher):
    def __init__(self, cfg: TeacherConfig, grid: tuple[int, int], net: nn.Module | None = None):
        super().__init__()
        from arm.tokenizer.efficientnet_lite import load_efficientnet_lite0

        # `net`: an already built network (arm plan measures one made on fake tensors, which
        # cannot change memory format; the layout does not change its bytes)
        # oneDNN's depthwise convolutions run markedly faster on channels-last tensors.
        self.net = net if net is not None else load_efficientnet_lite0().to(memory_format=torch.channels_last)
        self.distill_layer = cfg.distill_layer
        self.perceptual_layers = list(cfg.perceptual_layers)
        self.stride = self.net.stride(cfg.distill_layer)
        self.input_size = (grid[0] * self.stride, grid[1] * self.stride)
        self.distill_dim = self.net.channels(cfg.distill_layer)

    def _features(self, images01: torch.Tensor, layers: list[int], grid: tuple[int, int] | None
                  ) -> dict[int, torch.Tensor]:
        # convolutional: any grid's shape, at the stride that lands the distill layer on the tokens
        size = self.input_size if grid is None else (grid[0] * self.stride, grid[1] * self.stride)
        x = _resize(images01, size).contiguous(memory_format=torch.channels_last)
        return self.net.features(x, layers)


class SiglipTeacher(Teacher):
    """A SigLIP(2) vision tower; layer k is hidden state k (0 = the patch embeddings, k = after
    k encoder layers, -1 = the last, post-layernorm). A pass runs only as deep as its deepest
    requested layer and keeps no other hidden state."""

    def __init__(self, cfg: TeacherConfig, grid: tuple[int, int], net: nn.Module | None = None):
        super().__init__()
        from transformers import SiglipVisionModel

        # `net`: an already built tower (arm plan measures one made on fake tensors)
        self.net = net if net is not None else SiglipVisionModel.from_pretrained(cfg.name)
        self.net.requires_grad_(False).eval()
        c = self.net.config
        self.patch = c.patch_size
        self.side = c.image_size // c.patch_size
        self.tokens_per_cell = self.side / grid[0]  # teacher patches per token side on the square grid
        self.distill_layer = cfg.distill_layer
        self.perceptual_layers = list(cfg.perceptual_layers)
        self.distill_dim = c.hidden_size

    def _features(self, images01: torch.Tensor, layers: list[int], grid: tuple[int, int] | None
                  ) -> dict[int, torch.Tensor]:
        vm = self.net  # transformers 5: embeddings, encoder, post_layernorm on the model itself
        blocks = vm.encoder.layers
        depth = len(blocks) if -1 in layers else max(layers)
        # Another grid is seen at its own shape with as many teacher patches per token as the
        # square has, the position table interpolated to it (SigLIP's non-square path).
        th, tw = (self.side, self.side) if grid is None else (
            max(1, round(grid[0] * self.tokens_per_cell)), max(1, round(grid[1] * self.tokens_per_cell)))
        x = _resize(images01, (th * self.patch, tw * self.patch)) * 2 - 1
        h = vm.embeddings(x.to(vm.embeddings.patch_embedding.weight.dtype),
                          interpolate_pos_encoding=(th, tw) != (self.side, self.side))
        keep = {0: h} if 0 in layers else {}
        for i, block in enumerate(blocks[:depth], start=1):
            h = block(h, None)
            if i in layers:
                keep[i] = h
        if -1 in layers:
            keep[-1] = vm.post_layernorm(h)
        b, _, c = h.shape
        return {k: keep[k].transpose(1, 2).reshape(b, c, th, tw) for k in layers}


def build_teacher(cfg: TeacherConfig, grid: tuple[int, int], net: nn.Module | None = None) -> Teacher:
    teacher = EfficientNetTeacher(cfg, grid, net) if cfg.kind == "efficientnet_lite0" else SiglipTeacher(cfg, grid, net)
    teacher.requires_grad_(False)
    return teacher.eval()


def _resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
