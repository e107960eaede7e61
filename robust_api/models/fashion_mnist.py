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


class _MaxPool2(nn.MaxPool2d):
    """``nn.MaxPool2d(2)`` whose inference forward is the maximum of the four strided slices
    (two ``torch.maximum``): the same values (NaN propagates, as in max pooling), about ten
    times faster on the CPU than the index-tracking kernel that ``max_pool2d`` runs there.
    Training, autograd and odd sizes use the parent's forward."""

    def __init__(self) -> None:
        super().__init__(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training or (torch.is_grad_enabled() and x.requires_grad) or x.shape[-1] % 2 or x.shape[-2] % 2:
            return super().forward(x)
        rows = torch.maximum(x[..., 0::2, :], x[..., 1::2, :])
        return torch.maximum(rows[..., 0::2], rows[..., 1::2])


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

    ``cpu_single_thread = True``: its convolutions are too small for a team of threads to
    pay off, so the local provider runs :meth:`per_image` on CPU worker threads with one
    torch thread each, a chunk of the batch per worker (see
    :class:`robust_api.torch_utils.CpuWorkers`), and :meth:`head` on the whole batch with
    torch's threads: the same bits as ``forward`` on the whole batch, for every batch size
    (the convolutions give each image the same bits in any batch of two or more, on any
    number of threads; batches of 1–3 images run whole on one worker, which gives the
    same bits too).
    """

    cpu_single_thread = True

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
            _MaxPool2(),  # 28 -> 14
            block(32, 64),
            _MaxPool2(),  # 14 -> 7
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
        return self.head(self.per_image(x))

    def per_image(self, x: torch.Tensor) -> torch.Tensor:
        """The layers that treat each image on its own (normalization and convolutions):
        float32 [B, 1, 28, 28] in [0, 1] → features [B, 64, 7, 7], each image's the same bits
        in any batch. The local provider runs it on chunks of a batch in parallel."""
        if x.dim() != 4 or x.shape[1:] != (1, 28, 28):
            raise ValueError(f"expected input of shape [B, 1, 28, 28], got {tuple(x.shape)}")
        x = (x - _FMNIST_MEAN) / _FMNIST_STD
        return self.features(x)

    def head(self, features: torch.Tensor) -> torch.Tensor:
        """The rest of :meth:`forward` (the linear layers), on the whole batch: features
        [B, 64, 7, 7] → logits [B, num_classes]."""
        return self.classifier(features)


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
