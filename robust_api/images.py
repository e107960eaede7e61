"""Turning user input into one canonical image: float32 [H, W, C] in [0, 1], C ∈ {1, 3}.

Everything here runs before any query is sent, so bad input costs nothing. Size is checked
before pixels are decoded or converted: an image file's size comes from its header, an
array's from its shape, so a decompression bomb or a huge array is refused (or, when asked,
downscaled) without ever holding a float copy of it.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import stat
import warnings
from typing import Any, Optional

import numpy as np

from .errors import ImageTooLargeError, InvalidImageError

__all__ = ["as_image", "image_digest", "DEFAULT_MAX_PIXELS", "downscaled_size"]

logger = logging.getLogger(__name__)

_ALLOWED_CHANNELS = (1, 3)

#: The pixel limit (height × width) for local models and callables: 50 megapixels.
DEFAULT_MAX_PIXELS = 50_000_000

_INT_HINT = "use uint8 (0..255), uint16, or float in [0, 1]"


def downscaled_size(height: int, width: int, max_pixels: int) -> tuple[int, int]:
    """The largest (height, width) with the same aspect ratio (up to rounding down) and at
    most ``max_pixels`` pixels; the size itself when it already fits. Each side is ≥ 1."""
    if height * width <= max_pixels:
        return height, width
    scale = math.sqrt(max_pixels / (height * width))
    new_h, new_w = max(1, math.floor(height * scale)), max(1, math.floor(width * scale))
    while new_h * new_w > max_pixels:  # floating-point rounding at the boundary
        if new_h >= new_w:
            new_h -= 1
        else:
            new_w -= 1
    return new_h, new_w


def _too_large(height: int, width: int, max_pixels: int, source: str) -> ImageTooLargeError:
    return ImageTooLargeError(
        f"{source} is {height}×{width} = {height * width:,} pixels, above the limit of {max_pixels:,} "
        "pixels (the provider's input limit, or max_pixels=). Pass downscale=True to certify a "
        "box-filtered copy within the limit (the certificate is then for the smaller image), raise "
        "max_pixels= if the provider and memory_limit_mb= allow it, or resize the image yourself"
    )


def _open_pil(path: str):
    """``PIL.Image.open`` with Pillow's decompression-bomb warning and error turned into
    :class:`ImageTooLargeError` (only the header is read)."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(path)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLargeError(
            f"{path!r} is refused by Pillow's decompression-bomb guard ({exc}). If you trust the file, "
            "raise PIL.Image.MAX_IMAGE_PIXELS; to certify it, pass downscale=True or resize it first"
        ) from None


def _from_path(path: os.PathLike | str, max_pixels: Optional[int], downscale: bool) -> np.ndarray:
    try:
        path = os.fspath(path)
    except TypeError as exc:
        raise InvalidImageError(f"not a file path: {exc}") from None
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    if "\x00" in path:
        raise InvalidImageError("the image path contains a NUL character")
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise InvalidImageError(f"image file not found: {path!r}") from None
    except (OSError, ValueError) as exc:
        raise InvalidImageError(f"cannot access image file {path!r} ({type(exc).__name__}: {exc})") from None
    if stat.S_ISDIR(info.st_mode):
        raise InvalidImageError(f"{path!r} is a directory, not an image file")
    if not stat.S_ISREG(info.st_mode):  # a FIFO or a device would block or never end
        raise InvalidImageError(f"{path!r} is not a regular file (a pipe, socket or device?); pass an image file")
    from PIL import Image

    try:
        with _open_pil(path) as pil:
            return _from_pil(pil, source=repr(path), max_pixels=max_pixels, downscale=downscale)
    except InvalidImageError:
        raise
    except Image.DecompressionBombError as exc:  # some plugins check again while decoding
        raise ImageTooLargeError(f"{path!r} is refused by Pillow's decompression-bomb guard ({exc})") from None
    except MemoryError:
        raise ImageTooLargeError(f"not enough memory to decode {path!r}; resize it first") from None
    except Exception as exc:  # a corrupt or hostile file: Pillow's plugins raise many types
        raise InvalidImageError(
            f"cannot read {path!r} as an image ({type(exc).__name__}); use a PNG, JPEG or another format Pillow reads"
        ) from None


def _from_pil(pil: Any, source: str = "PIL image", max_pixels: Optional[int] = None,
              downscale: bool = False) -> np.ndarray:
    """The pixels of a PIL image: uint8 [H, W] / [H, W, 3], uint16 [H, W] for 16-bit grayscale
    (float32 in [0, 1] once downscaled); its size is checked (or reduced) before decoding."""
    from PIL import Image

    width, height = pil.size
    if width < 1 or height < 1:
        raise InvalidImageError(f"the image is empty ({source} is {width}×{height})")
    target = None
    if max_pixels is not None and width * height > max_pixels:
        if not downscale:
            raise _too_large(height, width, max_pixels, source)
        target = downscaled_size(height, width, max_pixels)
        logger.info("downscaling %s from %d×%d to %d×%d (max_pixels=%d)", source, height, width, *target, max_pixels)
        if getattr(pil, "format", None) == "JPEG" and pil.mode in ("L", "RGB"):
            pil.draft(pil.mode, (target[1], target[0]))  # DCT scaling: decode at ≥ the target size
    mode = pil.mode
    if mode in ("L", "RGB"):
        converted = pil
    elif mode in ("I;16", "I;16L", "I;16B"):  # 16-bit grayscale PNG: keep all 16 bits
        converted = pil
    elif mode in ("1", "P", "LA", "RGBA", "CMYK", "YCbCr", "RGBX", "PA", "RGBa", "LAB", "HSV"):
        target_mode = "L" if mode in ("1", "LA") else "RGB"
        logger.info("converting %s from mode %s to %s", source, mode, target_mode)
        converted = pil.convert(target_mode)
    else:
        raise InvalidImageError(
            f"unsupported PIL image mode {mode!r} in {source}; convert it first, e.g. img.convert('RGB')"
        )
    if target is not None:
        if converted.mode in ("L", "RGB"):
            if converted.size != (target[1], target[0]):
                converted = converted.resize((target[1], target[0]), Image.Resampling.BOX)
            return np.asarray(converted)
        return _resize_array(np.asarray(converted).astype(np.uint16), target)
    if converted.mode in ("L", "RGB"):
        return np.asarray(converted)
    return np.asarray(converted).astype(np.uint16)


def _resize_array(array: np.ndarray, target: tuple[int, int]) -> np.ndarray:
    """Box-filter ``array`` [H, W] or [H, W, C] to ``target`` (height, width), one channel at a
    time. uint8 stays uint8 (Pillow "L"); uint16 (scaled by 1/65535 after the filter) and
    floats go through Pillow "F" and come back as float32 in [0, 1]."""
    from PIL import Image

    height, width = target
    planes = array[:, :, None] if array.ndim == 2 else array
    if array.dtype == np.uint8:
        out = np.empty((height, width, planes.shape[2]), np.uint8)
        for c in range(planes.shape[2]):
            plane = Image.fromarray(np.ascontiguousarray(planes[:, :, c]), mode="L")
            out[:, :, c] = np.asarray(plane.resize((width, height), Image.Resampling.BOX))
        return out
    out = np.empty((height, width, planes.shape[2]), np.float32)
    for c in range(planes.shape[2]):
        plane = Image.fromarray(np.ascontiguousarray(planes[:, :, c], dtype=np.float32), mode="F")
        out[:, :, c] = np.asarray(plane.resize((width, height), Image.Resampling.BOX))
    if array.dtype == np.uint16:
        out /= np.float32(65535.0)
    np.clip(out, 0.0, 1.0, out=out)  # a box average of values in [0, 1], up to rounding
    return out


def _plain_array(image: np.ndarray) -> np.ndarray:
    """A base-class ndarray view of an ndarray subclass (np.matrix, memmap, masked arrays
    without a masked value); typed errors for masked values."""
    if isinstance(image, np.ma.MaskedArray):
        mask = np.ma.getmaskarray(image)
        if mask.any():
            raise InvalidImageError(
                f"the masked array has {int(mask.sum())} masked values; fill them first, e.g. img.filled(0)"
            )
        image = image.data
    # np.asarray never calls a subclass's methods on the data: a view of the same memory
    return np.asarray(image).view(np.ndarray)


def as_image(image: Any, max_pixels: Optional[int] = DEFAULT_MAX_PIXELS, downscale: bool = False) -> np.ndarray:
    """Validate and convert one image to float32 [H, W, C] in [0, 1].

    Args:
        image: a NumPy array [H, W] or [H, W, C] (C = 1 or 3) of uint8 (0–255), uint16
            (0–65535) or float16/32/64 values in [0, 1], in either byte order, any strides
            (subclasses such as ``np.matrix`` and ``np.memmap`` are read as plain arrays; a
            masked array only without masked values); a ``PIL.Image.Image``; or a path (str
            or ``os.PathLike``) to a regular image file Pillow can read.
        max_pixels: the most pixels (H × W) accepted, checked from the file header or the
            array shape before any pixel is decoded or converted; None: no limit of ours
            (Pillow's decompression-bomb guard, ``PIL.Image.MAX_IMAGE_PIXELS``, still applies
            to files).
        downscale: False: an image above ``max_pixels`` raises :class:`ImageTooLargeError`.
            True: it is box-filtered (aspect ratio kept, sides rounded down) to at most
            ``max_pixels`` pixels, and that smaller image is what is returned — and therefore
            what gets certified, hashed and logged. JPEG files are decoded at reduced size.

    Returns:
        A new C-contiguous float32 array [H, W, C] with values in [0, 1]. Arrays are
        converted exactly as ``astype(float32) / 255`` (uint8) or ``/ 65535`` (uint16), so the
        image digest of a given array does not depend on its layout or byte order.

    Raises:
        ImageTooLargeError: more than ``max_pixels`` pixels without ``downscale``, or a file
            Pillow's decompression-bomb guard refuses.
        InvalidImageError: for any other type, ndim, channel count, empty image, NaN/inf,
            unsupported dtype (bool, signed or 32/64-bit integers, complex, object, structured),
            float values outside [0, 1], masked values, or an unreadable or non-regular file.
    """
    if max_pixels is not None and (isinstance(max_pixels, bool) or not isinstance(max_pixels, (int, np.integer))
                                   or max_pixels < 1):
        raise InvalidImageError(f"max_pixels must be a positive integer or None, got {max_pixels!r}")
    if isinstance(image, (str, os.PathLike)):
        array = _from_path(image, max_pixels, downscale)
        max_pixels = None  # checked (and reduced) from the header
    elif type(image).__module__.startswith("PIL.") and hasattr(image, "mode") and hasattr(image, "size"):
        try:
            array = _from_pil(image, max_pixels=max_pixels, downscale=downscale)
        except InvalidImageError:
            raise
        except Exception as exc:  # a lazily opened, corrupt PIL image fails on decode
            raise InvalidImageError(f"cannot decode the PIL image ({type(exc).__name__}: {exc})") from None
        max_pixels = None
    elif isinstance(image, np.ndarray):
        array = _plain_array(image)
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
    if dtype.kind not in "uf" or dtype.fields is not None:
        raise InvalidImageError(f"unsupported dtype {dtype}; {_INT_HINT}")
    if not dtype.isnative:  # big-endian data on a little-endian machine (or the reverse)
        array = array.astype(dtype.newbyteorder("="))
        dtype = array.dtype
    if dtype not in (np.uint8, np.uint16, np.float16, np.float32, np.float64):
        raise InvalidImageError(f"unsupported dtype {dtype}; {_INT_HINT}")

    height, width = int(array.shape[0]), int(array.shape[1])
    if max_pixels is not None and height * width > max_pixels:
        if not downscale:
            raise _too_large(height, width, max_pixels, f"the {dtype} array")
        target = downscaled_size(height, width, max_pixels)
        logger.info("downscaling a %d×%d array to %d×%d (max_pixels=%d)", height, width, *target, max_pixels)
        if dtype.kind == "f":
            _check_unit_floats(array)
        array = _resize_array(array, target)  # uint8 stays uint8; the rest becomes float32 in [0, 1]
        dtype = array.dtype

    if dtype == np.uint8:
        out = array.astype(np.float32, order="C")
        out /= np.float32(255.0)
    elif dtype == np.uint16:
        out = array.astype(np.float32, order="C")
        out /= np.float32(65535.0)
    else:
        _check_unit_floats(array)
        out = array.astype(np.float32, order="C")
    return out


def _check_unit_floats(array: np.ndarray) -> None:
    """Raise InvalidImageError unless every value is finite and in [0, 1]."""
    if not np.all(np.isfinite(array)):
        raise InvalidImageError("the image contains NaN or infinite values")
    low, high = float(array.min()), float(array.max())
    if low < 0.0 or high > 1.0:
        hint = " Values look like 0..255: divide by 255." if high > 1.0 and high <= 255.0 and low >= 0.0 else ""
        raise InvalidImageError(f"float images must lie in [0, 1]; got values in [{low:g}, {high:g}].{hint}")


def image_digest(image: np.ndarray) -> str:
    """Hex SHA-256 of a canonical image (float32 [H, W, C]): its shape and its bytes.

    Two images get the same digest iff they have the same shape and the same float32 values.
    A C-contiguous float32 image is hashed in place (no copy of its bytes).
    """
    hasher = hashlib.sha256()
    hasher.update(("robust_api.image/1|" + "x".join(map(str, image.shape)) + "|").encode())
    contiguous = np.ascontiguousarray(image, dtype=np.float32)
    hasher.update(memoryview(contiguous.reshape(-1)).cast("B") if contiguous.size else b"")
    return hasher.hexdigest()
