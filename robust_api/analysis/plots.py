"""Certified-accuracy figures (matplotlib, optional): curves, drawing, deterministic files.

matplotlib is imported inside the functions that draw or save, so the analysis works
without it; :func:`check_plot_format` refuses a missing matplotlib or an unknown file type
before any work.
"""

from __future__ import annotations

import io
import logging
import os
from dataclasses import dataclass
from typing import Any, Optional, Sequence, Union

import numpy as np

from ..errors import InvalidParameterError, MissingDependencyError

__all__ = ["Curve", "PLOT_FORMATS", "check_plot_format", "draw_curves", "save_figure", "figure_svg",
           "X_LABEL", "Y_LABEL"]

logger = logging.getLogger(__name__)

#: The file types :func:`save_figure` writes, by suffix.
PLOT_FORMATS = ("pdf", "svg", "png")
X_LABEL = "L2 radius (pixel units of [0,1] images)"
Y_LABEL = "certified accuracy (%)"
NO_MATPLOTLIB = "plots need matplotlib: pip install 'robust-api[plot]'"
#: A fixed salt for the ids matplotlib writes into SVG files, so one figure gives one file.
SVG_HASHSALT = "robust-api"
_LINESTYLES = ("-", "--", "-.", ":")


@dataclass(frozen=True)
class Curve:
    """One group's certified-accuracy curve, as plotted.

    Attributes:
        label: the legend text (a human name of the group).
        radii: float64 breakpoints of the step function, increasing, starting at 0.
        accuracy: the certified accuracy (a fraction) at each radius: the plot draws it as a
            "pre" step (accuracy at r counts radius ≥ r, so it is constant on each interval
            (r_k, r_{k+1}]). NaN without a ground truth.
        end: the target radius where the curve stops, for a group of sequential
            certificates with a target (they certify the target; beyond it the curve would
            mean nothing); None for a curve drawn to the common end of the axis.
        key: the group's key.
    """

    label: str
    radii: np.ndarray
    accuracy: np.ndarray
    end: Optional[float]
    key: dict


def plot_format(path: Union[str, os.PathLike]) -> str:
    """The file type of ``path`` from its suffix, lower case ("pdf", "svg" or "png")."""
    return os.path.splitext(os.fspath(path))[1].lstrip(".").lower()


def check_plot_format(path: Union[str, os.PathLike]) -> str:
    """Refuse, before any work, a plot path of another type than .pdf, .svg or .png, or a
    missing matplotlib. Returns the format.

    Raises:
        InvalidParameterError: the suffix is not .pdf, .svg or .png.
        MissingDependencyError: matplotlib is not installed.
    """
    fmt = plot_format(path)
    if fmt not in PLOT_FORMATS:
        raise InvalidParameterError(
            f"cannot write the plot to {os.fspath(path)!r}: the file type follows the suffix; "
            "use .png, .pdf or .svg (.pdf and .svg are vector)"
        )
    _require_matplotlib()
    return fmt


def _require_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise MissingDependencyError(NO_MATPLOTLIB) from None


def _mpl_text(text: str) -> str:
    """Text matplotlib shows as written: no mathtext from a ``$``, and not hidden from the
    legend by a leading underscore."""
    text = text.replace("$", r"\$")
    return " " + text if text.startswith("_") else text


def draw_curves(ax: Any, curves: Sequence[Curve], title: Optional[str] = None) -> None:
    """Draw ``curves`` on matplotlib axes: one "pre" step line per curve (the same Line2D
    carries a marker at the end of a curve that stops at its target), axis labels with
    units, the legend under the axes."""
    for index, curve in enumerate(curves):
        style = dict(where="pre", linestyle=_LINESTYLES[(index // 10) % len(_LINESTYLES)], linewidth=1.5)
        if curve.end is not None:
            style.update(marker="o", markersize=5, markevery=[len(curve.radii) - 1])
        ax.step(curve.radii, 100 * curve.accuracy, label=_mpl_text(curve.label), **style)
    ax.set_xlabel(X_LABEL)
    ax.set_ylabel(Y_LABEL)
    # a little room above 100% and below 0%, so that curves there are not hidden by the frame
    ax.set_ylim(-2, 102)
    ax.set_yticks(range(0, 101, 20))
    ax.set_xlim(left=0)
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(_mpl_text(title), fontsize=9)
    if curves:
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), frameon=False)


def new_figure(groups: int) -> Any:
    """A matplotlib Figure (no pyplot state) sized for a legend of ``groups`` lines under the axes."""
    _require_matplotlib()
    from matplotlib.figure import Figure

    return Figure(figsize=(6.4, 3.8 + 0.2 * groups), dpi=100)


def _rc() -> dict:
    # text stays text in SVG (searchable, small; the viewer's sans-serif font draws it) and
    # TrueType in PDF (no Type 3 fonts, which publishers refuse)
    return {"svg.hashsalt": SVG_HASHSALT, "svg.fonttype": "none", "pdf.fonttype": 42}


def _metadata(fmt: str) -> dict:
    # no dates: the same figure gives the same bytes (a docs figure does not change on every run)
    return {"svg": {"Date": None}, "pdf": {"CreationDate": None, "ModDate": None}, "png": {}}[fmt]


def save_figure(figure: Any, target: Union[str, os.PathLike, io.IOBase], fmt: str) -> None:
    """Write ``figure`` as ``fmt`` ("pdf", "svg", "png"), without dates in the metadata and
    with fixed SVG ids, so that a figure gives the same file on every run."""
    from matplotlib import rc_context

    with rc_context(_rc()):
        figure.savefig(target, format=fmt, bbox_inches="tight", metadata=_metadata(fmt),
                       dpi=200 if fmt == "png" else "figure")
    logger.debug("wrote a %s figure", fmt)


def figure_svg(figure: Any) -> str:
    """The figure as an ``<svg>`` element (text, without the XML prolog and doctype), for
    inlining in HTML."""
    out = io.BytesIO()
    save_figure(figure, out, "svg")
    text = out.getvalue().decode("utf-8")
    return text[text.find("<svg"):]
