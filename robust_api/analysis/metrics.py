"""Pure summaries of many certificates: certified accuracy and average certified radius.

Inputs are plain sequences (one entry per test image); nothing here queries or reads files.
"""

from __future__ import annotations

from typing import Any, Dict, Sequence

import numpy as np

from ..results import ABSTAIN

__all__ = ["certified_accuracy", "average_certified_radius", "certified_accuracy_curve"]


def _correct(labels: Sequence[Any], truths: Sequence[Any]) -> np.ndarray:
    if len(labels) != len(truths):
        raise ValueError(f"{len(labels)} labels but {len(truths)} ground-truth labels")
    return np.array([label is not ABSTAIN and label == truth for label, truth in zip(labels, truths)], dtype=bool)


def certified_accuracy(labels: Sequence[Any], radii: Sequence[float], truths: Sequence[Any],
                       at: Sequence[float]) -> Dict[float, float]:
    """Fraction of images whose certified label equals the truth with radius ≥ r, for each r in ``at``.

    Args:
        labels: certified labels (``ABSTAIN`` counts as wrong), one per image.
        radii: certified L2 radii (≥ 0), one per image.
        truths: ground-truth labels, one per image.
        at: radii r ≥ 0 to report.

    Returns:
        {r: accuracy in [0, 1]}. At r = 0 this is the accuracy of the smoothed classifier's
        non-abstained, correct answers.
    """
    return {float(r): float(value) for r, value in zip(at, certified_accuracy_curve(labels, radii, truths, at))}


def average_certified_radius(labels: Sequence[Any], radii: Sequence[float], truths: Sequence[Any]) -> float:
    """ACR: mean over images of the radius when the certified label is correct, else 0."""
    correct = _correct(labels, truths)
    if len(correct) == 0:
        raise ValueError("no images")
    return float(np.mean(np.where(correct, np.asarray(radii, dtype=float), 0.0)))


def certified_accuracy_curve(labels: Sequence[Any], radii: Sequence[float], truths: Sequence[Any],
                             grid: Sequence[float]) -> np.ndarray:
    """Certified accuracy at every radius of ``grid`` (the curve of the papers' figures).

    Args:
        labels, radii, truths: as in :func:`certified_accuracy`, one entry per image.
        grid: radii r ≥ 0, any order.

    Returns:
        float64 array, same length as ``grid``: the fraction of images certified correctly
        with radius ≥ r. Non-increasing in r; computed with one sort, so a grid of any size
        over a million images takes milliseconds.
    """
    correct = _correct(labels, truths)
    if len(correct) == 0:
        raise ValueError("no images")
    certified = np.sort(np.asarray(radii, dtype=float)[correct])
    grid = np.asarray(grid, dtype=float)
    at_least = len(certified) - np.searchsorted(certified, grid, side="left")
    return at_least / len(correct)
