"""Export a few Fashion-MNIST test images as PNG files for the examples.

Usage (from the repository root)::

    python examples/export_fashion_mnist_images.py --out examples/images --per-class 3

For each of the 10 classes, the first ``--per-class`` test images of that
class (in test-set order) are written as 8-bit grayscale 28x28 PNGs named
``fmnist_test_{index:05d}_{classname_slug}.png``, plus a ``LABELS.csv`` with
columns ``file,test_index,label,class_name`` (``class_name`` spelled as the bundled
classifier answers, for ``robust-api analyze --labels``).
"""

from __future__ import annotations

import argparse
import csv
import re
import sys
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

try:
    from robust_api.datasets import FASHION_MNIST_CLASSES, load_fashion_mnist
except ImportError:  # running from a source checkout without installation
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from robust_api.datasets import FASHION_MNIST_CLASSES, load_fashion_mnist


def slugify(name: str) -> str:
    """Lowercase ``name`` and replace each non-alphanumeric character with "-".

    Example: ``"T-shirt/top" -> "t-shirt-top"``, ``"Ankle boot" -> "ankle-boot"``.
    """
    return re.sub(r"[^a-z0-9]", "-", name.lower())


def select_indices(labels: np.ndarray, per_class: int, num_classes: int = 10) -> List[int]:
    """Pick the first ``per_class`` indices of each class, in dataset order.

    Args:
        labels: int array ``[N]`` of labels in 0..num_classes-1.
        per_class: number of examples per class (>= 1).
        num_classes: number of classes.

    Returns:
        Sorted list of ``per_class * num_classes`` int indices into ``labels``
        (fewer if a class has fewer examples).
    """
    chosen: List[int] = []
    for c in range(num_classes):
        chosen.extend(int(i) for i in np.flatnonzero(labels == c)[:per_class])
    return sorted(chosen)


def export(out_dir: Path, per_class: int, root: Optional[str] = None) -> List[Tuple[str, int, int]]:
    """Write the PNGs and LABELS.csv into ``out_dir``.

    Args:
        out_dir: output directory (created if needed).
        per_class: images per class (>= 1).
        root: Fashion-MNIST directory, or None for the default.

    Returns:
        List of ``(file_name, test_index, label)`` rows, in test-set order.
    """
    images, labels = load_fashion_mnist("test", root=root)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows: List[Tuple[str, int, int]] = []
    for idx in select_indices(labels, per_class, len(FASHION_MNIST_CLASSES)):
        label = int(labels[idx])
        name = f"fmnist_test_{idx:05d}_{slugify(FASHION_MNIST_CLASSES[label])}.png"
        img = Image.fromarray(np.ascontiguousarray(images[idx]))  # uint8 [28, 28] -> mode "L"
        if img.mode != "L":
            raise ValueError(f"expected an 8-bit grayscale image, got mode {img.mode!r}")
        img.save(out_dir / name, optimize=True)
        rows.append((name, idx, label))
    with open(out_dir / "LABELS.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["file", "test_index", "label", "class_name"])
        writer.writerows((name, idx, label, FASHION_MNIST_CLASSES[label]) for name, idx, label in rows)
    return rows


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry point; returns 0 on success."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="examples/images", help="output directory")
    p.add_argument("--per-class", type=int, default=3, help="images per class")
    p.add_argument("--data-dir", default=None, help="Fashion-MNIST directory (default: env/system)")
    args = p.parse_args(argv)
    if args.per_class < 1:
        p.error("--per-class must be >= 1")
    rows = export(Path(args.out), args.per_class, args.data_dir)
    print(f"wrote {len(rows)} images and LABELS.csv to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
