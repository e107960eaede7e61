"""Turning user input into one canonical image: float32 [H, W, C] in [0, 1], C ∈ {1, 3}.

Accepted: NumPy arrays (HWC, CHW or 2-D, a batch axis of one), torch tensors (the same
layouts; torch stays optional), PIL images, paths, and the bytes of an encoded image file.
Everything here runs before any query is sent, so bad input costs nothing. Size is checked
before pixels are decoded or converted: an image file's size comes from its header, an
array's or a tensor's from its shape, so a decompression bomb or a huge array is refused (or,
when asked, downscaled) without ever holding a float copy of it.
"""

from __future__ import annotations

import hashlib
import io
import logging
import math
import os
import stat
import sys
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


def _open_pil(file: Any, source: Optional[str] = None):
    """``PIL.Image.open`` (of a path or a binary file object) with Pillow's decompression-bomb
    warning and error turned into :class:`ImageTooLargeError` (only the header is read);
    ``source`` names the input in messages (default: the path's repr)."""
    from PIL import Image

    source = repr(file) if source is None else source
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(file)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLargeError(
            f"{source} is refused by Pillow's decompression-bomb guard ({exc}). If you trust the file, "
            "raise PIL.Image.MAX_IMAGE_PIXELS; to certify it, pass downscale=True or resize it first"
        ) from None


def _decode(pil: Any, source: str, max_pixels: Optional[int], downscale: bool) -> np.ndarray:
    """The pixels of a freshly opened PIL image (see :func:`_from_pil`), closed afterwards;
    decoding errors become :class:`InvalidImageError` / :class:`ImageTooLargeError`."""
    from PIL import Image

    try:
        with pil:
            return _from_pil(pil, source=source, max_pixels=max_pixels, downscale=downscale)
    except InvalidImageError:
        raise
    except Image.DecompressionBombError as exc:  # some plugins check again while decoding
        raise ImageTooLargeError(f"{source} is refused by Pillow's decompression-bomb guard ({exc})") from None
    except MemoryError:
        raise ImageTooLargeError(f"not enough memory to decode {source}; resize it first") from None
    except Exception as exc:  # a corrupt or hostile file: Pillow's plugins raise many types
        raise InvalidImageError(
            f"cannot read {source} as an image ({type(exc).__name__}); it is truncated or corrupt, or not a "
            "format Pillow reads: use a PNG, JPEG or another format Pillow reads"
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
    try:
        pil = _open_pil(path)
    except ImageTooLargeError:
        raise
    except Exception as exc:  # not an image, or unreadable: Pillow's plugins raise many types
        raise InvalidImageError(
            f"cannot read {path!r} as an image ({type(exc).__name__}); use a PNG, JPEG or another format Pillow reads"
        ) from None
    return _decode(pil, repr(path), max_pixels, downscale)


#: Encoded image bytes longer than this are not looked up as a file name in error hints.
_PATH_HINT_MAX_BYTES = 4096


def _from_bytes(data: Any, max_pixels: Optional[int], downscale: bool) -> np.ndarray:
    """Decode the bytes of an image file (``bytes``, ``bytearray`` or a one-dimensional
    byte ``memoryview``) with Pillow, its size checked from the header first."""
    if isinstance(data, memoryview):
        if data.ndim != 1 or data.format not in ("B", "b", "c"):
            raise InvalidImageError(
                f"a memoryview of {data.format!r} items and shape {tuple(data.shape)} holds pixels, not an encoded "
                "image file: pass the array itself (np.asarray(view)), or the file's bytes"
            )
        data = data.tobytes()
    if not data:
        raise InvalidImageError(
            "the image bytes are empty; pass the contents of an image file (PNG, JPEG, ...) or a path"
        )
    source = f"the {len(data):,} image bytes"
    try:
        pil = _open_pil(io.BytesIO(data), source)
    except ImageTooLargeError:
        raise
    except Exception as exc:  # PIL.UnidentifiedImageError, or a plugin's own error
        raise InvalidImageError(
            f"cannot decode {source} as an image ({type(exc).__name__}): pass the contents of an image file "
            f"Pillow reads (PNG, JPEG, ...){_bytes_hint(data)}"
        ) from None
    return _decode(pil, source, max_pixels, downscale)


def _bytes_hint(data: bytes) -> str:
    """What undecodable bytes might be instead, for the error message."""
    if len(data) <= _PATH_HINT_MAX_BYTES and b"\x00" not in data:
        try:
            name = os.fsdecode(data)
            if os.path.exists(name):
                return f"; these bytes name a file: pass the path as a str or pathlib.Path, e.g. {name!r}"
        except (UnicodeDecodeError, ValueError, OSError):
            pass
    return "; for raw pixels pass a NumPy array, e.g. np.frombuffer(data, np.uint8).reshape(height, width, channels)"


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


def _is_torch_tensor(value: Any) -> bool:
    """True for a ``torch.Tensor`` (or subclass); never imports torch: a tensor cannot exist
    unless torch was imported already."""
    torch = sys.modules.get("torch")
    tensor_type = getattr(torch, "Tensor", None) if torch is not None else None
    return isinstance(tensor_type, type) and isinstance(value, tensor_type)


def _from_tensor(tensor: Any, max_pixels: Optional[int], downscale: bool) -> np.ndarray:
    """A torch tensor's values as a NumPy array of the same shape: detached, on the CPU,
    bfloat16 widened (exactly) to float32. Its shape is checked (layout and pixel limit)
    before anything is copied from a GPU."""
    torch = sys.modules["torch"]
    if tensor.layout != torch.strided:
        raise InvalidImageError(f"a {tensor.layout} tensor cannot be an image; pass tensor.to_dense()")
    if tensor.is_quantized:
        raise InvalidImageError("a quantized tensor cannot be an image; pass tensor.dequantize()")
    shape = tuple(int(n) for n in tensor.shape)
    drop_batch, channels_first = _layout(shape, "tensor", note=False)  # as_image notes ambiguity, once
    if max_pixels is not None and not downscale:
        core = shape[1:] if drop_batch else shape
        height, width = (core[1], core[2]) if channels_first else (core[0], core[1])
        if height * width > max_pixels:
            raise _too_large(height, width, max_pixels, f"the {tensor.dtype} tensor")
    try:
        tensor = tensor.detach()
        if tensor.dtype == torch.bfloat16:  # NumPy has no bfloat16; float32 holds it exactly
            tensor = tensor.float()
        return np.asarray(tensor.numpy(force=True))
    except (RuntimeError, TypeError, ValueError) as exc:  # a meta tensor, an exotic dtype
        raise InvalidImageError(
            f"cannot read the {tensor.dtype} tensor on {tensor.device} ({type(exc).__name__}: {exc}); pass a CPU "
            "tensor of uint8, or of floats in [0, 1]"
        ) from None


def _layout(shape: tuple, what: str = "array", note: bool = True) -> tuple[bool, bool]:
    """(drop a leading batch axis of one, channels first) for an image ``what`` of ``shape``,
    by the rule :func:`as_image` documents (an ambiguous shape is logged at INFO when
    ``note``); InvalidImageError for a shape that is not one image."""
    drop_batch = False
    if len(shape) == 4:
        if shape[0] != 1:
            raise InvalidImageError(
                f"got a 4-D {what} {shape}, a batch of {shape[0]} images: pass one image [H, W, C] at a time "
                "(loop over the batch, or certify_many(list(batch))); a batch of one, [1, C, H, W] or "
                "[1, H, W, C], is accepted"
            )
        drop_batch, shape = True, shape[1:]
    if len(shape) == 2:
        return drop_batch, False
    if len(shape) != 3:
        raise InvalidImageError(
            f"an image must be [H, W] or [H, W, C] (or [C, H, W]; C = 1 or 3), got {'a' if what == 'tensor' else 'an'} "
            f"{what} of shape {shape}"
        )
    first, last = shape[0], shape[2]
    if last in _ALLOWED_CHANNELS:
        if first in _ALLOWED_CHANNELS and note:
            logger.info(
                "%s of shape %s could be [H, W, C] or [C, H, W]; read as [H, W, C] (H=%d, W=%d, C=%d). For a "
                "channels-first image of width %d, pass it as [H, W, C]: np.transpose(img, (1, 2, 0))",
                what, shape, first, shape[1], last, last,
            )
        return drop_batch, False
    if first in _ALLOWED_CHANNELS:
        return drop_batch, True
    if last == 4:
        raise InvalidImageError("the image has 4 channels (RGBA?); drop the alpha channel: img[..., :3]")
    if first == 4:
        raise InvalidImageError(
            f"the channels-first image {shape} has 4 channels (RGBA?); drop the alpha channel: img[:3]"
        )
    raise InvalidImageError(
        f"the image must have 1 or 3 channels, last ([H, W, C]) or first ([C, H, W]); got {last} last and "
        f"{first} first (shape {shape})"
    )


def as_image(image: Any, max_pixels: Optional[int] = DEFAULT_MAX_PIXELS, downscale: bool = False) -> np.ndarray:
    """Validate and convert one image to float32 [H, W, C] in [0, 1].

    Args:
        image: one of
            - a NumPy array of uint8 (0–255), uint16 (0–65535) or float16/32/64 values in
              [0, 1], in either byte order, any strides (subclasses such as ``np.matrix``
              and ``np.memmap`` are read as plain arrays; a masked array only without
              masked values), laid out as below;
            - a ``torch.Tensor`` with the same layouts and values (also bfloat16), on any
              device, with or without gradients (it is detached and copied to the CPU;
              torch itself is never imported here);
            - a ``PIL.Image.Image``;
            - a path (str or ``os.PathLike``) to a regular image file Pillow can read;
            - the bytes of such a file (``bytes``, ``bytearray`` or a byte ``memoryview``:
              the contents of a PNG or JPEG file, an HTTP response body).

            Layout of arrays and tensors: [H, W] is grayscale. A 3-D array is [C, H, W]
            (channels first, as torch and torchvision lay images out) when its first axis
            is 1 or 3 and its last is not, else [H, W, C]; C must be 1 or 3. A shape that
            fits both, such as (3, H, 3) or (1, H, 1), is read as [H, W, C] (logged at INFO):
            an image 3 pixels wide needs to be passed as [H, W, C]. A leading batch axis of
            one, [1, C, H, W] or [1, H, W, C], is dropped; a larger batch is refused. The
            same picture as [H, W, C] or [C, H, W] gives the same canonical image, digest
            and noise.
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
            float values outside [0, 1], masked values, an unreadable or non-regular file, or
            bytes that are not an image file Pillow reads. The message says how to fix it.
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
    elif isinstance(image, (bytes, bytearray, memoryview)):
        array = _from_bytes(image, max_pixels, downscale)
        max_pixels = None
    elif isinstance(image, np.ndarray) or _is_torch_tensor(image):
        what = "array"
        if isinstance(image, np.ndarray):
            array = _plain_array(image)
        else:
            what, array = "tensor", _from_tensor(image, max_pixels, downscale)
        drop_batch, channels_first = _layout(array.shape, what)
        if drop_batch:
            array = array[0]
        if channels_first:
            array = np.transpose(array, (1, 2, 0))  # a view: the float copy below is C-contiguous HWC
    else:
        hint = (" (an object with .detach() that is not a torch tensor: pass a NumPy array, e.g. np.asarray(x))"
                if hasattr(image, "detach") else "")
        raise InvalidImageError(
            f"expected a NumPy array, a PIL image or a path to an image file (or a torch tensor, or the bytes of an "
            f"image file), got {type(image).__name__}{hint}"
        )

    if array.ndim == 2:
        array = array[:, :, None]
    if array.size == 0:
        raise InvalidImageError(f"the image is empty (shape {array.shape})")

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
