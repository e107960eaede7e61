"""Dataset readers for robust_api.

Provides a dependency-free reader for the IDX file format (as used by MNIST
and Fashion-MNIST), a loader for the Fashion-MNIST dataset as shipped by
the Debian package ``dataset-fashion-mnist``, and the example images that
ship inside the package (:func:`example_images`, :func:`example_labels`),
which the tutorial uses: they need no checkout, download or Debian package.
"""

from __future__ import annotations

import gzip
import logging
import os
from pathlib import Path
from typing import Optional, Tuple, Union

import numpy as np

__all__ = [
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_ENV_VAR",
    "DEFAULT_FASHION_MNIST_DIR",
    "read_idx",
    "load_fashion_mnist",
    "example_images",
    "example_labels",
]

logger = logging.getLogger(__name__)

#: The 10 Fashion-MNIST class names, indexed by label (0..9).
FASHION_MNIST_CLASSES: Tuple[str, ...] = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

#: Environment variable that overrides the Fashion-MNIST directory.
FASHION_MNIST_ENV_VAR = "ROBUST_API_FASHION_MNIST_DIR"

#: Directory where the Debian package ``dataset-fashion-mnist`` installs the files.
DEFAULT_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"

# IDX type code -> numpy element type. IDX payloads are big-endian.
_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

_GZIP_MAGIC = b"\x1f\x8b"

_FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def _read_bytes(path: Path) -> bytes:
    """Return the (decompressed) contents of ``path``.

    Gzip compression is detected from the file's leading magic bytes, not
    from its name, so both ``foo.gz`` and plain ``foo`` are accepted.
    """
    with open(path, "rb") as fh:
        raw = fh.read()
    if raw[:2] == _GZIP_MAGIC:
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise ValueError(f"{path}: corrupt gzip stream: {exc}") from exc
    return raw


def read_idx(path: Union[str, os.PathLike]) -> np.ndarray:
    """Read an IDX file (gzip-compressed or not) into a numpy array.

    The IDX header is: two zero bytes, one type-code byte, one byte giving
    the number of dimensions ``ndim``, then ``ndim`` big-endian uint32 sizes,
    followed by the big-endian payload.

    Supported type codes: ``0x08`` uint8, ``0x09`` int8, ``0x0B`` int16,
    ``0x0C`` int32, ``0x0D`` float32, ``0x0E`` float64.

    Args:
        path: Path to the IDX file. Gzip compression is detected from the
            file content (magic bytes ``1f 8b``), regardless of extension.

    Returns:
        An array of shape ``(d_1, ..., d_ndim)`` (shape ``()`` if ``ndim`` is
        0) whose dtype is the native-byte-order equivalent of the IDX type
        (e.g. ``uint8`` for code ``0x08``, ``int32`` for ``0x0C``). Values
        are returned unchanged (no scaling), so e.g. uint8 images lie in
        [0, 255]. The array is writeable and owns its memory.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: if the magic number is invalid (non-zero leading bytes or
            an unknown type code), the header is truncated, or the payload
            size does not match the size declared in the header.
    """
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4:
        raise ValueError(
            f"{path}: not an IDX file: only {len(data)} bytes, need at least 4 for the magic number"
        )
    magic = data[:4]
    if magic[0] != 0 or magic[1] != 0:
        raise ValueError(
            f"{path}: bad IDX magic number 0x{magic.hex()}: first two bytes must be zero"
        )
    type_code = magic[2]
    ndim = magic[3]
    if type_code not in _IDX_DTYPES:
        known = ", ".join(f"0x{c:02X}" for c in sorted(_IDX_DTYPES))
        raise ValueError(
            f"{path}: bad IDX magic number 0x{magic.hex()}: unknown type code "
            f"0x{type_code:02X} (known: {known})"
        )
    header_len = 4 + 4 * ndim
    if len(data) < header_len:
        raise ValueError(
            f"{path}: truncated IDX header: {ndim} dimensions need {header_len} bytes, "
            f"file has {len(data)}"
        )
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    dtype = _IDX_DTYPES[type_code]
    count = 1
    for d in shape:
        count *= d
    expected = count * dtype.itemsize
    actual = len(data) - header_len
    if actual != expected:
        raise ValueError(
            f"{path}: IDX payload size mismatch: header declares shape {shape} of "
            f"{dtype.name} ({expected} bytes) but payload has {actual} bytes"
        )
    arr = np.frombuffer(data, dtype=dtype, count=count, offset=header_len).reshape(shape)
    arr = arr.astype(dtype.newbyteorder("="), copy=True)
    logger.debug("read_idx(%s): shape=%s dtype=%s", path, arr.shape, arr.dtype)
    return arr


def _find_idx_file(root: Path, stem: str) -> Optional[Path]:
    """Return ``root/stem.gz`` or ``root/stem`` if either exists, else None."""
    for name in (stem + ".gz", stem):
        candidate = root / name
        if candidate.is_file():
            return candidate
    return None


def load_fashion_mnist(
    split: str = "train", root: Optional[Union[str, os.PathLike]] = None
) -> Tuple[np.ndarray, np.ndarray]:
    """Load the Fashion-MNIST training or test split.

    Args:
        split: ``"train"`` (60,000 examples) or ``"test"`` (10,000 examples).
        root: Directory containing the IDX files
            (``{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]``). Defaults to
            the ``ROBUST_API_FASHION_MNIST_DIR`` environment variable if set,
            else ``/usr/share/datasets/fashion-mnist``.

    Returns:
        ``(images, labels)`` where ``images`` is uint8 of shape ``[N, 28, 28]``
        with values in [0, 255] (0 = background), and ``labels`` is int64 of
        shape ``[N]`` with values in 0..9 indexing :data:`FASHION_MNIST_CLASSES`.

    Raises:
        ValueError: if ``split`` is not ``"train"`` or ``"test"``, or the files
            are malformed / inconsistent with each other.
        FileNotFoundError: if the dataset files are missing.
    """
    if split not in _FASHION_MNIST_FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if root is None:
        root = os.environ.get(FASHION_MNIST_ENV_VAR) or DEFAULT_FASHION_MNIST_DIR
    root = Path(root)
    image_stem, label_stem = _FASHION_MNIST_FILES[split]
    paths = []
    for stem in (image_stem, label_stem):
        found = _find_idx_file(root, stem)
        if found is None:
            raise FileNotFoundError(
                f"Fashion-MNIST file {stem}.gz not found in {root}. Install it with "
                f"'apt-get install dataset-fashion-mnist' or set the "
                f"{FASHION_MNIST_ENV_VAR} environment variable to a directory "
                f"containing the IDX files."
            )
        paths.append(found)
    images = read_idx(paths[0])
    labels = read_idx(paths[1])
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28):
        raise ValueError(
            f"{paths[0]}: expected uint8 images of shape [N, 28, 28], "
            f"got {images.dtype} {images.shape}"
        )
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise ValueError(
            f"{paths[1]}: expected {images.shape[0]} labels of shape [N], got {labels.shape}"
        )
    labels = labels.astype(np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= len(FASHION_MNIST_CLASSES)):
        raise ValueError(
            f"{paths[1]}: labels out of range 0..{len(FASHION_MNIST_CLASSES) - 1}: "
            f"min={labels.min()} max={labels.max()}"
        )
    logger.debug("load_fashion_mnist(%s): %d examples from %s", split, len(labels), root)
    return images, labels


#: Folder of the example images inside the package.
_EXAMPLES = ("assets", "examples")


def _examples_dir() -> Path:
    from importlib import resources

    return Path(str(resources.files("robust_api").joinpath(*_EXAMPLES)))


def example_images() -> list:
    """The example images that ship with the package: 30 Fashion-MNIST test images (3 per
    class), 28×28 grayscale PNG files named ``fmnist_test_<index>_<class>.png``.

    They are the same files as ``examples/images/`` in the source repository (where the
    README's main job reads them), installed with the package, so that code run from an
    installed copy (the tutorial notebook, a quick check) finds them without a checkout or a
    download: ``RobustAPI("local").certify(example_images()[2], noise_sd=0.25)``.

    Returns:
        A list of ``pathlib.Path``, sorted by test-set index (file name).

    Raises:
        FileNotFoundError: the package was installed without its data files.
    """
    folder = _examples_dir()
    paths = sorted(folder.glob("fmnist_test_*.png"))
    if not paths:
        raise FileNotFoundError(f"no example images in {folder}: reinstall robust-api with its package data")
    return paths


def example_labels() -> Path:
    """The true labels of :func:`example_images`: a CSV file with the columns ``file``
    (the image's file name), ``test_index``, ``label`` (0–9) and ``class_name`` (spelled as
    the bundled classifier answers), for ``robust_api.analyze(log, labels=example_labels())``
    and ``robust-api analyze --labels``.

    Raises:
        FileNotFoundError: the package was installed without its data files.
    """
    path = _examples_dir() / "LABELS.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: reinstall robust-api with its package data")
    return path
