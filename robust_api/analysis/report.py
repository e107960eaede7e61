"""Group certified images and report them: the papers' table, CSV, JSON and certified-accuracy plots."""

from __future__ import annotations

import csv
import io
import math
import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence, Union

import numpy as np

from ..errors import InvalidParameterError, MissingDependencyError
from ..query_logs.records import MAX_LOGGED_COST_USD
from .collect import CertifiedImage
from .metrics import certified_accuracy_curve

__all__ = ["GroupSummary", "AnalysisReport", "GROUP_FIELDS", "summarize_group", "check_plot_path"]

_NO_MATPLOTLIB = "plots need matplotlib: pip install 'robust-api[plot]'"

#: Fields rows can be grouped by (``by=``).
GROUP_FIELDS = ("provider", "model_version", "denoiser", "noise_sd", "method", "settings", "alpha", "source")


@dataclass(frozen=True)
class GroupSummary:
    """The certificates of one group (one row of the papers' table).

    Attributes:
        key: field → value of the ``by`` fields shared by the group.
        images: certified images in the group.
        with_truth: those with a ground truth: the denominator of the accuracies.
        certified_accuracy: radius r → fraction of ``with_truth`` images certified with the
            ground-truth label and radius ≥ r (NaN without any ground truth).
        acr: average certified radius: mean over ``with_truth`` images of the radius when
            correct, else 0.
        abstention_rate: fraction of ``images`` that abstained.
        queries: queries paid for by the group's certify calls (None when unknown, e.g. TSV).
        samples: queries the methods used, paid or reused from the log (None when unknown).
        cost_usd: what the paid queries cost at the logged prices (None when unknown: a TSV,
            or ``invalid_costs`` > 0).
        invalid_costs: logged records of the group whose cost is not a valid price.
    """

    key: dict
    images: int
    with_truth: int
    certified_accuracy: dict
    acr: float
    abstention_rate: float
    queries: Optional[int]
    samples: Optional[int]
    cost_usd: Optional[float]
    invalid_costs: int = 0

    @property
    def queries_per_image(self) -> Optional[float]:
        return None if self.queries is None or not self.images else self.queries / self.images

    def name(self) -> str:
        """The key as one line of text, e.g. ``"local:fashion_mnist_cnn, none, 0.25, cohen"``."""
        return ", ".join(_text(value) for value in self.key.values()) or "all"


def _known_sum(values: Sequence[Optional[float]]) -> Optional[float]:
    return None if any(v is None for v in values) else sum(values)


def summarize_group(key: dict, rows: Sequence[CertifiedImage], radii: Sequence[float]) -> GroupSummary:
    """Summarize one group of rows (pure): accuracies over the rows with a ground truth."""
    judged = [row for row in rows if row.truth is not None]
    if judged:
        labels = [row.label for row in judged]
        certified = [row.radius for row in judged]
        truths = [row.truth for row in judged]
        curve = certified_accuracy_curve(labels, certified, truths, radii)
        accuracy = {float(r): float(value) for r, value in zip(radii, curve)}
        acr = float(np.mean([row.radius if row.correct else 0.0 for row in judged]))
    else:
        accuracy = {float(r): math.nan for r in radii}
        acr = math.nan
    return GroupSummary(
        key=key, images=len(rows), with_truth=len(judged), certified_accuracy=accuracy, acr=acr,
        abstention_rate=sum(row.abstained for row in rows) / len(rows),
        queries=_known_sum([row.queries for row in rows]), samples=_known_sum([row.samples for row in rows]),
        cost_usd=_known_sum([row.cost_usd for row in rows]),
        invalid_costs=sum(row.invalid_costs for row in rows),
    )


def _text(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _percent(value: float) -> str:
    return "-" if math.isnan(value) else f"{100 * value:.1f}"


def _usd(value: Optional[float]) -> str:
    """A dollar amount as text; None (a logged cost is not a valid price) is said in words."""
    return "unknown" if value is None else f"{value:.2f}"


#: Left-out calls listed one per line under the table (all of them are in ``report.incomplete``).
LISTED_INCOMPLETE = 20


@dataclass
class AnalysisReport:
    """The result of :func:`robust_api.analyze`.

    Attributes:
        rows: one :class:`~robust_api.analysis.CertifiedImage` per certified image.
        groups: one :class:`GroupSummary` per distinct ``by`` key, sorted by key.
        radii: the radii of the accuracy columns.
        by: the grouping fields.
        truth: "labels" or "clean"; ``truth_description`` says it in words.
        sources: what was read.
        skipped: reason → calls left out ("incomplete", "damaged", "repeat", "duplicate").
        predict_queries, predict_cost_usd: queries (and dollars) of predict calls, such as the
            clean-label queries, which no group counts.
        incomplete_queries, incomplete_cost_usd: what the certify calls that did not complete
            (or have a gap) paid (no group counts them either).
        incomplete: one :class:`~robust_api.analysis.collect.IncompleteCall` per certify call
            left out as incomplete or damaged: its status, samples, gaps and what it paid.
        invalid_cost_calls: run ids of calls whose log holds a cost that is not a valid price
            (NaN, infinite, negative, not a number, above ``MAX_LOGGED_COST_USD``); every
            dollar total they belong to is None ("unknown"), never a wrong number.
    """

    rows: list
    groups: list
    radii: tuple
    by: tuple
    truth: str
    truth_description: str
    sources: list
    skipped: Counter = field(default_factory=Counter)
    predict_queries: int = 0
    predict_cost_usd: Optional[float] = 0.0
    incomplete_queries: int = 0
    incomplete_cost_usd: Optional[float] = 0.0
    incomplete: list = field(default_factory=list)
    invalid_cost_calls: list = field(default_factory=list)

    # -- text -------------------------------------------------------------------------------
    def _columns(self) -> list[str]:
        return [*self.by, "images", *(f"r={r:g}" for r in self.radii), "ACR", "abstain %", "queries/img", "USD"]

    def _cells(self, group: GroupSummary) -> list[str]:
        per_image = group.queries_per_image
        return [
            *(_text(group.key[name]) for name in self.by),
            str(group.images),
            *(_percent(group.certified_accuracy[float(r)]) for r in self.radii),
            "-" if math.isnan(group.acr) else f"{group.acr:.3f}",
            f"{100 * group.abstention_rate:.1f}",
            "-" if per_image is None else f"{per_image:.1f}",
            "unknown" if group.invalid_costs else "-" if group.cost_usd is None else f"{group.cost_usd:.2f}",
        ]

    def notes(self) -> list[str]:
        """The lines printed under the table: ground truth, what was left out, other spending."""
        lines = [f"certified accuracy (%) at radius r; ground truth: {self.truth_description}"]
        unjudged = sum(group.images - group.with_truth for group in self.groups)
        if unjudged:
            lines.append(f"{unjudged} certified image(s) have no ground truth and are left out of the accuracies")
        if self.skipped.get("damaged"):
            lines.append(
                f"WARNING: {self.skipped['damaged']} certify call(s) are marked complete but have missing samples: "
                "the log was edited or damaged; they are left out, never certified from what remains"
            )
        if self.skipped.get("incomplete"):
            lines.append(
                f"{self.skipped['incomplete']} certify call(s) did not complete (interrupted, failed or still "
                "running) and are left out"
            )
        if self.incomplete:
            lines.append(
                f"left-out calls paid {self.incomplete_queries} queries (USD {_usd(self.incomplete_cost_usd)}):"
            )
            lines.extend(f"  {call.describe()}" for call in self.incomplete[:LISTED_INCOMPLETE])
            if len(self.incomplete) > LISTED_INCOMPLETE:
                lines.append(f"  ... and {len(self.incomplete) - LISTED_INCOMPLETE} more (report.incomplete, "
                             "or --format json, lists them all)")
        if self.skipped.get("repeat"):
            lines.append(
                f"{self.skipped['repeat']} repeated call(s) on the same image and settings are left out "
                "(the earliest is kept, whatever the results; the queries of all are counted)"
            )
        if self.skipped.get("duplicate"):
            lines.append(f"{self.skipped['duplicate']} call(s) appeared in more than one source and were read once")
        if self.predict_queries:
            lines.append(
                f"predict calls (clean labels) paid {self.predict_queries} more queries "
                f"(USD {_usd(self.predict_cost_usd)})"
            )
        if self.invalid_cost_calls:
            named = ", ".join(self.invalid_cost_calls[:5]) + (" ..." if len(self.invalid_cost_calls) > 5 else "")
            lines.append(
                f"USD unknown: {len(self.invalid_cost_calls)} call(s) log a per-query cost that is not a valid price "
                f"(NaN, infinite, negative, not a number, or above USD {MAX_LOGGED_COST_USD:g}); their dollars "
                f"are not added to any total: {named}"
            )
        return lines

    def table(self) -> str:
        """The papers' layout: one row per group, certified accuracy (%) at each radius, then
        ACR, abstention rate, paid queries per image and dollars, and the notes below."""
        header = self._columns()
        cells = [header] + [self._cells(group) for group in self.groups]
        widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
        lines = ["  ".join(value.ljust(width) for value, width in zip(row, widths)).rstrip() for row in cells]
        lines.insert(1, "  ".join("-" * width for width in widths))
        return "\n".join(lines + [""] + self.notes())

    def to_csv(self, path: Union[str, os.PathLike, None] = None) -> str:
        """One line per group: the ``by`` fields, images, ``with_truth``, ``acc@r`` as fractions,
        ACR, abstention rate, queries, samples, USD. Also written to ``path`` if given."""
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow([*self.by, "images", "with_truth", *(f"acc@{r:g}" for r in self.radii), "acr",
                         "abstention_rate", "queries", "samples", "cost_usd", "invalid_costs", "truth"])
        for group in self.groups:
            writer.writerow([
                *("" if group.key[name] is None else group.key[name] for name in self.by),
                group.images, group.with_truth, *(group.certified_accuracy[float(r)] for r in self.radii),
                group.acr, group.abstention_rate, _blank(group.queries), _blank(group.samples),
                _blank(group.cost_usd), group.invalid_costs, self.truth,
            ])
        text = out.getvalue()
        if path is not None:
            with open(path, "w", encoding="utf-8", newline="") as handle:
                handle.write(text)
        return text

    def to_json(self, rows: bool = False) -> dict:
        """A JSON-able dict: truth, radii, sources, notes, groups, the left-out calls
        (``incomplete``) and the calls with invalid costs (NaN → None, unknown dollars → None);
        with ``rows=True`` also every certified image."""
        def clean(value: Any) -> Any:
            return None if isinstance(value, float) and math.isnan(value) else value

        groups = [
            {
                "key": group.key, "images": group.images, "with_truth": group.with_truth,
                "certified_accuracy": {f"{r:g}": clean(v) for r, v in group.certified_accuracy.items()},
                "acr": clean(group.acr), "abstention_rate": group.abstention_rate, "queries": group.queries,
                "samples": group.samples, "cost_usd": group.cost_usd, "invalid_costs": group.invalid_costs,
            }
            for group in self.groups
        ]
        out = {
            "truth": self.truth, "truth_description": self.truth_description, "radii": list(self.radii),
            "by": list(self.by), "sources": list(self.sources), "skipped": dict(self.skipped),
            "predict_queries": self.predict_queries, "predict_cost_usd": self.predict_cost_usd,
            "incomplete_queries": self.incomplete_queries, "incomplete_cost_usd": self.incomplete_cost_usd,
            "incomplete": [
                {**call.__dict__, "phases": {name: {"samples": samples, "missing": missing}
                                             for name, (samples, missing) in call.phases.items()}}
                for call in self.incomplete
            ],
            "invalid_cost_calls": list(self.invalid_cost_calls), "notes": self.notes(), "groups": groups,
        }
        if rows:
            out["rows"] = [{**row.__dict__, "correct": row.correct} for row in self.rows]
        return out

    # -- curves and plots -------------------------------------------------------------------
    def group_rows(self, group: GroupSummary) -> list:
        """The rows of one group."""
        return [row for row in self.rows if {name: getattr(row, name) for name in self.by} == group.key]

    def curve(self, group: GroupSummary, grid: Optional[Sequence[float]] = None) -> tuple[np.ndarray, np.ndarray]:
        """Certified accuracy of ``group`` at the radii of ``grid``.

        Args:
            group: one of :attr:`groups`.
            grid: radii ≥ 0; default: 0, every distinct certified radius of the group, and 5%
                beyond the largest radius of the report: the exact breakpoints of the step
                function (accuracy at r counts radius ≥ r, so it is constant on each
                interval (r_k, r_{k+1}] and a "pre" step plot draws it exactly).

        Returns:
            (radii, accuracies): float64 arrays of the same length (NaN without ground truth).
        """
        judged = [row for row in self.group_rows(group) if row.truth is not None]
        if grid is None:
            end = 1.05 * max([row.radius for row in self.rows] + [max(self.radii), 1e-3])
            grid = np.unique(np.concatenate([[0.0, end], [row.radius for row in judged]]))
        grid = np.asarray(grid, dtype=float)
        if not judged:
            return grid, np.full(len(grid), np.nan)
        values = certified_accuracy_curve([r.label for r in judged], [r.radius for r in judged],
                                          [r.truth for r in judged], grid)
        return grid, values

    def plot(self, path: Union[str, os.PathLike, None] = None, ax: Any = None, title: Optional[str] = None):
        """Certified accuracy against radius, one step curve per group (matplotlib).

        Args:
            path: save the figure there (PNG, PDF, SVG … by suffix).
            ax: draw on these matplotlib axes instead of a new figure.
            title: the figure title (default: the ground truth used).

        Returns:
            The matplotlib ``Figure``.

        Raises:
            MissingDependencyError: matplotlib is not installed (``pip install 'robust-api[plot]'``).
        """
        if path is not None:
            check_plot_path(path)  # also checks that matplotlib is installed
        try:
            from matplotlib.figure import Figure
        except ImportError:
            raise MissingDependencyError(_NO_MATPLOTLIB) from None
        if ax is None:
            # the legend goes under the axes: group names are long (provider, denoiser, σ, method ...)
            figure = Figure(figsize=(6.4, 3.8 + 0.2 * len(self.groups)), dpi=100)
            ax = figure.add_subplot()
        else:
            figure = ax.figure
        for group in self.groups:
            grid, values = self.curve(group)
            ax.step(grid, 100 * values, where="pre", label=group.name())
        ax.set_xlabel("L2 radius (pixel units in [0, 1])")
        ax.set_ylabel("certified accuracy (%)")
        ax.set_ylim(0, 100)
        ax.set_xlim(left=0)
        ax.grid(alpha=0.3)
        ax.set_title(title or f"ground truth: {self.truth_description}", fontsize=9)
        if self.groups:
            ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), frameon=False)
        if path is not None:
            figure.savefig(path, bbox_inches="tight")
        return figure


def check_plot_path(path: Union[str, os.PathLike]) -> None:
    """Refuse, before any work, a plot path matplotlib cannot write (or a missing matplotlib).

    Raises:
        MissingDependencyError: matplotlib is not installed.
        InvalidParameterError: the suffix names no format matplotlib writes.
    """
    try:
        from matplotlib.backend_bases import FigureCanvasBase
    except ImportError:
        raise MissingDependencyError(_NO_MATPLOTLIB) from None
    suffix = os.path.splitext(os.fspath(path))[1].lstrip(".").lower()
    if suffix not in FigureCanvasBase.get_supported_filetypes():
        raise InvalidParameterError(f"cannot write the plot to {os.fspath(path)!r}: use .png, .pdf or .svg")


def _blank(value: Any) -> Any:
    return "" if value is None else value
