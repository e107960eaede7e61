"""Test doubles shared by the test modules (import as ``from doubles import ...``)."""

import numpy as np


def halfspace_label(x: np.ndarray) -> str:
    """The half-space base classifier on one pixel: "A" iff pixel (0, 0, 0) < 0.5."""
    return "A" if float(x[0, 0, 0]) < 0.5 else "B"


class Counting:
    """A callable provider that counts what it was asked (calls and images)."""

    def __init__(self):
        self.calls = 0
        self.images = 0

    def __call__(self, batch):
        assert batch.dtype == np.float32 and batch.ndim == 4
        self.calls += 1
        self.images += len(batch)
        return [halfspace_label(x) for x in batch]
