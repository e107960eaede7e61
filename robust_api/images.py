"""Turning user input into one canonical image: float32 [H, W, C] in [0, 1], C ∈ {1, 3}.

Everything here runs before any query is sent, so bad input costs nothing.
"""

from __future__ import annotations

import hashlib
import logging
import os
from typing import Any

import numpy as np

from .errors import InvalidImageError

__all__ = ["as_image", "image_digest"]

logger = logging.getLogger(__name__)

_ALLOWED_CHANNELS = (1, 3)


def _from_path(path: os.PathLike | str) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    path = os.fspath(path)
    if not os.path.exists(path):
        raise InvalidImageError(f"image file not found: {path!r}")
    if os.path.isdir(path):
        raise InvalidImageError(f"{path!r} is a directory, not an image file")
    try:
        with Image.open(path) as pil:
            pil.load()
            return _from_pil(pil, source=path)
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise InvalidImageError(
            f"cannot read {path!r} as an image ({type(exc).__name__}); use a PNG, JPEG or another format Pillow reads"
        ) from None


def _from_pil(pil: Any, source: str = "PIL image") -> np.ndarray:
    mode = pil.mode
    if mode in ("L", "RGB"):
        return np.asarray(pil)
    if mode in ("I;16", "I;16L", "I;16B"):  # 16-bit grayscale PNG: keep all 16 bits
        return np.asarray(pil).astype(np.uint16)
    if mode in ("1", "P", "LA", "RGBA", "CMYK", "YCbCr", "RGBX", "PA"):
        target = "L" if mode in ("1", "LA") else "RGB"
        logger.info("converting %s from mode %s to %s", source, mode, target)
        return np.asarray(pil.convert(target))
    raise InvalidImageError(
        f"unsupported PIL image mode {mode!r} in {source}; convert it first, e.g. img.convert('RGB')"
    )


def as_image(image: Any) -> np.ndarray:
    """Validate and convert one image to float32 [H, W, C] in [0, 1].

    Args:
        image: a NumPy array [H, W] or [H, W, C] (C = 1 or 3) of uint8 (0–255), uint16
            (0–65535) or float16/32/64 values in [0, 1]; a ``PIL.Image.Image``; or a path
            (str or ``os.PathLike``) to an image file Pillow can read.

    Returns:
        A new C-contiguous float32 array [H, W, C] with values in [0, 1].

    Raises:
        InvalidImageError: for any other type, ndim, channel count, empty image, NaN/inf,
            unsupported dtype, float values outside [0, 1], or an unreadable file.
    """
    if isinstance(image, (str, os.PathLike)):
        array = _from_path(image)
    elif type(image).__module__.startswith("PIL.") and hasattr(image, "mode"):
        array = _from_pil(image)
    elif isinstance(image, np.ndarray):
        array = image
    else:
        hint = " (a torch tensor: pass tensor.permute(1, 2, 0).cpu().numpy())" if hasattr(image, "detach") else ""
        raise InvalidImageError(
            f"expected a NumPy array, a PIL image or a path to an image file, got {type(image).__name__}{hint}"
        )

    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim == 4:
        raise InvalidImageError(
            f"got a 4-D array {array.shape}: pass one image [H, W, C] at a time (loop over the batch)"
        )
    if array.ndim != 3:
        raise InvalidImageError(f"an image must be [H, W] or [H, W, C], got an array of shape {array.shape}")
    if array.size == 0:
        raise InvalidImageError(f"the image is empty (shape {array.shape})")
    channels = array.shape[2]
    if channels not in _ALLOWED_CHANNELS:
        if array.shape[0] in _ALLOWED_CHANNELS:
            raise InvalidImageError(
                f"shape {array.shape} looks channels-first; pass [H, W, C], e.g. np.transpose(img, (1, 2, 0))"
            )
        if channels == 4:
            raise InvalidImageError("the image has 4 channels (RGBA?); drop the alpha channel: img[..., :3]")
        raise InvalidImageError(f"the image must have 1 or 3 channels, got {channels} (shape {array.shape})")

    dtype = array.dtype
    if dtype == np.uint8:
        out = array.astype(np.float32) / np.float32(255.0)
    elif dtype == np.uint16:
        out = array.astype(np.float32) / np.float32(65535.0)
    elif dtype in (np.float16, np.float32, np.float64):
        if not np.all(np.isfinite(array)):
            raise InvalidImageError("the image contains NaN or infinite values")
        low, high = float(array.min()), float(array.max())
        if low < 0.0 or high > 1.0:
            hint = " Values look like 0..255: divide by 255." if high > 1.0 and high <= 255.0 and low >= 0.0 else ""
            raise InvalidImageError(f"float images must lie in [0, 1]; got values in [{low:g}, {high:g}].{hint}")
        out = array.astype(np.float32)
    else:
        raise InvalidImageError(
            f"unsupported dtype {dtype}; use uint8 (0..255), uint16, or float in [0, 1]"
        )
    return np.ascontiguousarray(out)


def image_digest(image: np.ndarray) -> str:
    """Hex SHA-256 of a canonical image (float32 [H, W, C]): its shape and its bytes.

    Two images get the same digest iff they have the same shape and the same float32 values.
    """
    hasher = hashlib.sha256()
    hasher.update(("robust_api.image/1|" + "x".join(map(str, image.shape)) + "|").encode())
    hasher.update(np.ascontiguousarray(image, dtype=np.float32).tobytes())
    return hasher.hexdigest()
