"""A small CNN classifier for Fashion-MNIST (28x28 grayscale, 10 classes)."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["ARCH_NAME", "CLASSIFIER_FORMAT", "FashionMNISTCNN", "build", "known_archs"]

#: Architecture name stored in the ``"arch"`` metadata of saved weights.
ARCH_NAME = "fashion_mnist_cnn"

#: ``"format"`` metadata of classifier checkpoints that ``robust_api.providers.local`` loads.
CLASSIFIER_FORMAT = "robust_api.classifier/1"

# Per-pixel mean / std of the Fashion-MNIST training set, with pixels in [0, 1].
_FMNIST_MEAN = 0.2860
_FMNIST_STD = 0.3530


class FashionMNISTCNN(nn.Module):
    """Small convolutional classifier for Fashion-MNIST.

    Layout (about 230k parameters)::

        normalize -> conv3x3(1->32)-BN-ReLU -> conv3x3(32->32)-BN-ReLU -> maxpool2
                  -> conv3x3(32->64)-BN-ReLU -> maxpool2
                  -> flatten(64*7*7) -> dropout -> linear(3136->64)-ReLU
                  -> dropout -> linear(64->10)

    Input normalization (subtracting the training-set mean and dividing by its
    std) happens inside the module, so callers pass raw pixel intensities
    scaled to [0, 1].
    """

    def __init__(self, num_classes: int = 10, dropout: float = 0.25) -> None:
        """Create an untrained network.

        Args:
            num_classes: number of output logits (10 for Fashion-MNIST).
            dropout: dropout probability used before both linear layers
                (only active in training mode), in [0, 1).
        """
        super().__init__()

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(cin, cout, kernel_size=3, padding=1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True),
            )

        self.features = nn.Sequential(
            block(1, 32),
            block(32, 32),
            nn.MaxPool2d(2),  # 28 -> 14
            block(32, 64),
            nn.MaxPool2d(2),  # 14 -> 7
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(dropout),
            nn.Linear(64 * 7 * 7, 64),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(64, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Compute class logits.

        Args:
            x: float32 tensor of shape ``[B, 1, 28, 28]`` with pixel values in
                [0, 1] (0 = black background, as stored in Fashion-MNIST).

        Returns:
            float32 tensor of shape ``[B, num_classes]`` of unnormalized logits
            (apply ``softmax(dim=1)`` for probabilities).
        """
        if x.dim() != 4 or x.shape[1:] != (1, 28, 28):
            raise ValueError(f"expected input of shape [B, 1, 28, 28], got {tuple(x.shape)}")
        x = (x - _FMNIST_MEAN) / _FMNIST_STD
        return self.classifier(self.features(x))


_REGISTRY = {ARCH_NAME: FashionMNISTCNN}


def known_archs() -> tuple:
    """Return the architecture names accepted by :func:`build`, as a sorted tuple of str."""
    return tuple(sorted(_REGISTRY))


def build(arch: str) -> nn.Module:
    """Instantiate a fresh (randomly initialized) model by architecture name.

    Args:
        arch: architecture name, e.g. ``"fashion_mnist_cnn"`` (the ``"arch"``
            metadata entry of a saved safetensors file).

    Returns:
        A new ``nn.Module`` in training mode. For ``"fashion_mnist_cnn"`` it maps
        float32 ``[B, 1, 28, 28]`` inputs in [0, 1] to float32 logits ``[B, 10]``.

    Raises:
        ValueError: if ``arch`` is not a known architecture name; the message
            lists the known names.
    """
    try:
        cls = _REGISTRY[arch]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown architecture {arch!r}; known architectures: {', '.join(known_archs())}"
        ) from None
    return cls()
