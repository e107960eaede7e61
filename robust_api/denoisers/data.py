"""Training and evaluation images for denoisers, all available offline.

* ``"fashion-mnist"`` — the Debian ``dataset-fashion-mnist`` package (60k train / 10k test,
  28×28 gray), see :func:`robust_api.datasets.load_fashion_mnist`.
* ``"photos"`` — natural color photos that Python packages ship: scikit-image's
  ``skimage.data`` photos (public domain or CC0) and scikit-learn's ``load_sample_images``
  (CC BY 2.0, danielbuechele and vultilion on Flickr). :data:`HELD_OUT_PHOTOS` are never
  trained on and are where PSNR is reported. Needs ``pip install 'robust-api[train]'``.
* a folder of image files (PNG, JPEG …), for a user's own data.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Dict, List, Sequence, Tuple

import numpy as np
import torch

from ..errors import InvalidParameterError, MissingDependencyError

__all__ = ["PHOTO_NAMES", "TRAIN_PHOTOS", "HELD_OUT_PHOTOS", "load_photo", "load_photos",
           "fashion_mnist_tensors", "load_image_folder"]


def _skimage(name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        try:
            import skimage.data
        except ImportError:
            raise MissingDependencyError("photos need scikit-image: pip install 'robust-api[train]'") from None
        image = getattr(skimage.data, name)()
        return image

    return load


def _sklearn(index: int) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        try:
            from sklearn.datasets import load_sample_images
        except ImportError:
            raise MissingDependencyError("photos need scikit-learn: pip install 'robust-api[train]'") from None
        return load_sample_images().images[index]

    return load


_PHOTOS: Dict[str, Callable[[], np.ndarray]] = {
    "astronaut": _skimage("astronaut"),
    "chelsea": _skimage("chelsea"),
    "coffee": _skimage("coffee"),
    "rocket": _skimage("rocket"),
    "hubble_deep_field": _skimage("hubble_deep_field"),
    "retina": _skimage("retina"),
    "immunohistochemistry": _skimage("immunohistochemistry"),
    "sklearn_china": _sklearn(0),
    "sklearn_flower": _sklearn(1),
}

#: Every photo name :func:`load_photo` knows (all RGB uint8, 300–1411 pixels on a side).
PHOTO_NAMES: Tuple[str, ...] = tuple(_PHOTOS)
#: Photos never used for training; PSNR of the shipped color denoisers is reported on these.
HELD_OUT_PHOTOS: Tuple[str, ...] = ("coffee", "sklearn_flower")
#: The photos the shipped color denoisers were trained on.
TRAIN_PHOTOS: Tuple[str, ...] = tuple(n for n in PHOTO_NAMES if n not in HELD_OUT_PHOTOS)


def _to_tensor(image: np.ndarray) -> torch.Tensor:
    """uint8 [H, W] or [H, W, C] → float32 [C, H, W] in [0, 1]."""
    array = np.asarray(image)
    if array.ndim == 2:
        array = array[:, :, None]
    if array.dtype != np.uint8:
        raise InvalidParameterError(f"expected uint8 images, got {array.dtype}")
    return torch.from_numpy(np.array(array, copy=True)).permute(2, 0, 1).float().div_(255.0)


def load_photo(name: str) -> torch.Tensor:
    """One named photo as float32 [3, H, W] in [0, 1]."""
    try:
        loader = _PHOTOS[name]
    except KeyError:
        raise InvalidParameterError(f"unknown photo {name!r}; known: {', '.join(PHOTO_NAMES)}") from None
    return _to_tensor(loader())


def load_photos(names: Sequence[str]) -> List[torch.Tensor]:
    """Several named photos, each float32 [3, H, W] in [0, 1] (sizes differ)."""
    return [load_photo(name) for name in names]


def fashion_mnist_tensors(split: str) -> Tuple[torch.Tensor, torch.Tensor]:
    """Fashion-MNIST ``split`` as (float32 [N, 1, 28, 28] in [0, 1], int64 labels [N])."""
    from ..datasets import load_fashion_mnist

    images, labels = load_fashion_mnist(split)
    return torch.from_numpy(images).float().div_(255.0).unsqueeze(1), torch.from_numpy(labels)


def load_image_folder(folder: os.PathLike, channels: int) -> List[torch.Tensor]:
    """Every image file in ``folder`` (sorted) as float32 [channels, H, W] in [0, 1]."""
    from PIL import Image

    paths = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"})
    if not paths:
        raise InvalidParameterError(f"no image files (.png, .jpg, …) in {os.fspath(folder)!r}")
    mode = "L" if channels == 1 else "RGB"
    return [_to_tensor(np.asarray(Image.open(p).convert(mode))) for p in paths]
