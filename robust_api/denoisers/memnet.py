"""MemNet (Tai et al., 2017) as configured by denoised smoothing (Salman et al., 2020).

A BN-ReLU-Conv feature extractor, ``num_memory_blocks`` memory blocks — each
``num_residual_blocks`` residual blocks (two BN-ReLU-Conv 3×3 each) whose outputs, together
with the outputs of all earlier memory blocks, are fused by a BN-ReLU-Conv 1×1 gate — and a
BN-ReLU-Conv reconstructor; the result is added to the input. Parameter names
(``feature_extractor.bn.weight``, ``dense_memory.<i>.recursive_unit.<j>.relu_conv1.conv.weight``,
``dense_memory.<i>.gate_unit.conv.weight`` …) follow the paper's code, so its ``memnet`` and
``imagenet_memnet`` checkpoints (64 channels, 3 memory blocks of 6 residual blocks) load
unchanged.
"""

from __future__ import annotations

from typing import Any, Dict, List

import torch
from torch import nn

from ..errors import DenoiserError
from .base import DenoiserModule

__all__ = ["MemNet"]


class _BNReLUConv(nn.Sequential):
    def __init__(self, in_channels: int, out_channels: int, kernel: int = 3, padding: int = 1):
        super().__init__()
        self.add_module("bn", nn.BatchNorm2d(in_channels))
        self.add_module("relu", nn.ReLU(inplace=True))
        self.add_module("conv", nn.Conv2d(in_channels, out_channels, kernel, 1, padding, bias=False))


class _ResidualBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.relu_conv1 = _BNReLUConv(channels, channels)
        self.relu_conv2 = _BNReLUConv(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.relu_conv2(self.relu_conv1(x))


class _MemoryBlock(nn.Module):
    def __init__(self, channels: int, num_residual_blocks: int, position: int):
        super().__init__()
        self.recursive_unit = nn.ModuleList(_ResidualBlock(channels) for _ in range(num_residual_blocks))
        # The gate sees this block's short-term outputs plus the long-term memory: the feature
        # extractor's output and the gates of the ``position - 1`` earlier blocks.
        self.gate_unit = _BNReLUConv((num_residual_blocks + position) * channels, channels, 1, 0)

    def forward(self, x: torch.Tensor, memory: List[torch.Tensor]) -> torch.Tensor:
        short_term = []
        for block in self.recursive_unit:
            x = block(x)
            short_term.append(x)
        gate = self.gate_unit(torch.cat(short_term + memory, dim=1))
        memory.append(gate)
        return gate


class MemNet(DenoiserModule):
    """MemNet denoiser with a global residual connection.

    Args:
        image_channels: 1 or 3.
        channels: feature channels (the paper: 64).
        num_memory_blocks: memory blocks (the paper's denoisers: 3).
        num_residual_blocks: residual blocks per memory block (the paper's denoisers: 6).

    ``forward``: float [B, C, H, W] in [0, 1] → float [B, C, H, W].
    """

    arch = "memnet"
    # its outputs change in the last bit with the batch size and torch's thread count (the
    # 1×1 gate convolutions), so it keeps running whole batches in the caller's thread
    parallel_forward = False

    def __init__(self, image_channels: int = 3, channels: int = 64, num_memory_blocks: int = 3,
                 num_residual_blocks: int = 6):
        super().__init__(image_channels)
        if min(int(channels), int(num_memory_blocks), int(num_residual_blocks)) < 1:
            raise DenoiserError("MemNet needs channels, num_memory_blocks and num_residual_blocks >= 1")
        self.channels = int(channels)
        self.num_memory_blocks = int(num_memory_blocks)
        self.num_residual_blocks = int(num_residual_blocks)
        self.activation_channels = self.channels * (self.num_residual_blocks + self.num_memory_blocks)
        self.feature_extractor = _BNReLUConv(image_channels, channels)
        self.reconstructor = _BNReLUConv(channels, image_channels)
        self.dense_memory = nn.ModuleList(
            _MemoryBlock(channels, self.num_residual_blocks, position + 1) for position in range(self.num_memory_blocks)
        )

    def config(self) -> Dict[str, Any]:
        return {"image_channels": self.image_channels, "channels": self.channels,
                "num_memory_blocks": self.num_memory_blocks, "num_residual_blocks": self.num_residual_blocks}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        out = self.feature_extractor(x)
        memory = [out]
        for block in self.dense_memory:
            out = block(out, memory)
        return x + self.reconstructor(out)
