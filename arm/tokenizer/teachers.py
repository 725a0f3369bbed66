"""Frozen teachers: targets of the feature-distillation loss and the space of the perceptual loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from arm.tokenizer.config import TeacherConfig


class Teacher(nn.Module):
    """`features(images01)` -> {layer: [B, C, h, w]}; never trained (eval mode, no grads to its weights)."""

    distill_layer: int
    perceptual_layers: list[int]
    distill_dim: int

    def layers(self) -> list[int]:
        return sorted({self.distill_layer, *self.perceptual_layers})

    def features(self, images01: torch.Tensor, layers: list[int] | None = None) -> dict[int, torch.Tensor]:
        raise NotImplementedError

    def train(self, mode: bool = True) -> "Teacher":
        return super().train(False)  # BatchNorm statistics and dropout stay frozen


class EfficientNetTeacher(Teacher):
    def __init__(self, cfg: TeacherConfig, grid: tuple[int, int]):
        super().__init__()
        from arm.tokenizer.efficientnet_lite import load_efficientnet_lite0

        self.net = load_efficientnet_lite0()
        self.distill_layer = cfg.distill_layer
        self.perceptual_layers = list(cfg.perceptual_layers)
        stride = self.net.stride(cfg.distill_layer)
        self.input_size = (grid[0] * stride, grid[1] * stride)
        self.distill_dim = self.net.channels(cfg.distill_layer)
        # oneDNN's depthwise convolutions run markedly faster on channels-last tensors.
        self.net.to(memory_format=torch.channels_last)

    def features(self, images01: torch.Tensor, layers: list[int] | None = None) -> dict[int, torch.Tensor]:
        x = _resize(images01, self.input_size).contiguous(memory_format=torch.channels_last)
        return self.net.features(x, layers or self.layers())


class SiglipTeacher(Teacher):
    """A SigLIP(2) vision tower; layer k is hidden state k (-1 = the last, post-layernorm)."""

    def __init__(self, cfg: TeacherConfig):
        super().__init__()
        from transformers import SiglipVisionModel

        self.net = SiglipVisionModel.from_pretrained(cfg.name)
        self.net.requires_grad_(False).eval()
        c = self.net.config
        self.input_size = (c.image_size, c.image_size)
        self.side = c.image_size // c.patch_size
        self.distill_layer = cfg.distill_layer
        self.perceptual_layers = list(cfg.perceptual_layers)
        self.distill_dim = c.hidden_size

    def features(self, images01: torch.Tensor, layers: list[int] | None = None) -> dict[int, torch.Tensor]:
        x = _resize(images01, self.input_size) * 2 - 1
        out = self.net(pixel_values=x, output_hidden_states=True)
        feats = {}
        for layer in layers or self.layers():
            h = out.last_hidden_state if layer == -1 else out.hidden_states[layer]
            b, n, c = h.shape
            feats[layer] = h.transpose(1, 2).reshape(b, c, self.side, self.side)
        return feats


def build_teacher(cfg: TeacherConfig, grid: tuple[int, int]) -> Teacher:
    teacher = EfficientNetTeacher(cfg, grid) if cfg.kind == "efficientnet_lite0" else SiglipTeacher(cfg)
    teacher.requires_grad_(False)
    return teacher.eval()


def _resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
