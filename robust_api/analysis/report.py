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

from ..errors import InvalidParameterError
from ..query_logs.records import MAX_LOGGED_COST_USD
from .collect import CertifiedImage
from .labels import group_labels
from .latex import latex_table
from .metrics import certified_accuracy_curve
from .plots import Curve, check_plot_format, draw_curves, figure_svg, new_figure, save_figure

__all__ = ["GroupSummary", "AnalysisReport", "GROUP_FIELDS", "summarize_group", "check_plot_path"]

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
        with ``rows=True`` also every certified image: its fields (``image`` is the digest,
        ``image_name`` the logged name or None) plus ``name`` (the logged name, else the
        digest's first 12 hex digits) and ``correct``."""
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
            out["rows"] = [{**row.__dict__, "name": row.display_name, "correct": row.correct} for row in self.rows]
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

    def group_labels(self) -> list[str]:
        """Human names of :attr:`groups`, in order, all different: e.g. "Google (emulator),
        DnCNN σ=0.25, Cohen N=100" for ``google:label_detection@127.0.0.1:38775``,
        ``denoiser:fashion-mnist-dncnn-0.25``, 0.25, cohen, ``N0=20 N=100`` (see
        :mod:`robust_api.analysis.labels`). The legends, LaTeX rows and HTML headings use them."""
        return group_labels([group.key for group in self.groups])

    def short_truth_description(self) -> str:
        """The ground truth in words, without file paths (for titles and shared reports)."""
        text = "true labels" if self.truth == "labels" else "the provider's own label on the clean image"
        if any(row.run_id is None for row in self.rows):
            text += "; TSV rows: their label column"
        return text

    def group_target(self, group: GroupSummary) -> Optional[float]:
        """The radius where ``group``'s curve ends: the largest target radius when every
        certificate of the group is a sequential one with a target (it certifies the
        target; beyond it the curve means nothing), else None (drawn to the axis' end)."""
        targets = [row.target_radius for row in self.group_rows(group)]
        if not targets or any(target is None for target in targets):
            return None
        return max(targets)

    def curves(self, labels: Optional[Sequence[str]] = None) -> list[Curve]:
        """The curves :meth:`plot` draws, one :class:`~robust_api.analysis.plots.Curve` per group.

        Each holds the exact breakpoints of :meth:`curve`; the curve of a group of targeted
        sequential certificates stops at :meth:`group_target` (its last point is the target,
        with the accuracy there), the others run to 5% beyond the report's largest radius.

        Args:
            labels: legend texts, one per group (default :meth:`group_labels`).
        """
        labels = self.group_labels() if labels is None else [str(label) for label in labels]
        if len(labels) != len(self.groups):
            raise InvalidParameterError(f"labels: {len(labels)} given for {len(self.groups)} groups")
        out = []
        for label, group in zip(labels, self.groups):
            grid, values = self.curve(group)
            end = self.group_target(group)
            if end is not None:
                grid, values = self.curve(group, np.append(grid[grid < end], end))
            out.append(Curve(label=label, radii=grid, accuracy=values, end=end, key=dict(group.key)))
        return out

    def plot(self, path: Union[str, os.PathLike, None] = None, ax: Any = None, title: Optional[str] = None,
             labels: Optional[Sequence[str]] = None):
        """Certified accuracy against radius, one step curve per group (matplotlib).

        The legend names each group in words (:meth:`group_labels`); a group of sequential
        certificates with a target radius is drawn up to that radius, where a dot ends it.
        The x axis is the L2 radius in pixel units of [0, 1] images, the y axis the certified
        accuracy in %.

        Args:
            path: save the figure there; the file type follows the suffix: ``.pdf`` or
                ``.svg`` (vector; text stays text) or ``.png`` (200 dpi). Files carry no date,
                so the same report gives the same file.
            ax: draw on these matplotlib axes instead of a new figure.
            title: the figure title; default: the ground truth in words (never a file
                path); ``""`` for none (a paper's caption says it).
            labels: legend texts, one per group, instead of :meth:`group_labels`.

        Returns:
            The matplotlib ``Figure``.

        Raises:
            InvalidParameterError: ``path`` has another suffix than .pdf, .svg or .png
                (checked before anything is drawn; :func:`check_plot_path` checks it
                before an analysis), or ``labels`` has the wrong length.
            MissingDependencyError: matplotlib is not installed (``pip install 'robust-api[plot]'``).
        """
        fmt = check_plot_format(path) if path is not None else None  # also checks that matplotlib is installed
        curves = self.curves(labels)
        if ax is None:
            # the legend goes under the axes: group names are long (provider, denoiser, σ, method ...)
            figure = new_figure(len(self.groups))
            ax = figure.add_subplot()
        else:
            figure = ax.figure
        draw_curves(ax, curves, f"ground truth: {self.short_truth_description()}" if title is None else title)
        if path is not None:
            save_figure(figure, path, fmt)
        return figure

    def plot_svg(self, title: Optional[str] = "") -> str:
        """The plot as an ``<svg>`` element (text), e.g. to inline in HTML.

        Raises:
            MissingDependencyError: matplotlib is not installed.
        """
        return figure_svg(self.plot(title=title))

    # -- paper and browser output -------------------------------------------------------------
    def to_latex(self, path: Union[str, os.PathLike, None] = None, acr: bool = False,
                 labels: Optional[Sequence[str]] = None, digits: int = 1) -> str:
        """The certified-accuracy table as a LaTeX ``tabular`` (booktabs rules).

        One row per group, named in words (:meth:`group_labels`, escaped for LaTeX), one
        column per radius of :attr:`radii` with the certified accuracy in % (``--`` without
        a ground truth). No ``table`` float or caption: wrap it in your own. Needs
        ``\\usepackage{booktabs}``.

        Args:
            path: also write the text there (UTF-8).
            acr: add a column with the average certified radius.
            labels: row names, one per group, instead of :meth:`group_labels` (plain text;
                escaped here).
            digits: decimals of the percentages.

        Returns:
            The ``\\begin{tabular}`` ... ``\\end{tabular}`` text.
        """
        names = self.group_labels() if labels is None else [str(label) for label in labels]
        if len(names) != len(self.groups):
            raise InvalidParameterError(f"labels: {len(names)} given for {len(self.groups)} groups")
        text = latex_table(
            names, self.radii, [[group.certified_accuracy[float(r)] for r in self.radii] for group in self.groups],
            acr=[group.acr for group in self.groups] if acr else None, digits=digits,
        )
        if path is not None:
            with open(path, "w", encoding="utf-8", newline="") as handle:
                handle.write(text)
        return text

    def to_html(self, path: Union[str, os.PathLike, None] = None, images: Any = None,
                title: Optional[str] = None, plot: bool = True) -> str:
        """A self-contained HTML report (one file, inline CSS, no script) that opens in a browser.

        At the top: images, how many were certified, the ground truth, the queries and
        dollars paid (certify, predict and left-out calls), then one row per group with the
        certified accuracy at each radius, ACR, abstention and spending, and the plot as
        inline SVG when matplotlib is installed (and a ground truth is known). Then, per
        group, one row per image: thumbnail (when ``images`` has its file; else the start
        of its digest), name, certified label, ground truth, radius, p_lower, queries, USD.
        The notes of :meth:`notes` close it. All text from the logs is HTML-escaped.

        Args:
            path: also write the page there (UTF-8).
            images: where the image files are, for thumbnails (embedded as base64 PNG):
                a folder (searched recursively), one file, a mapping of image name or
                digest → file, or a list of files. Files are matched by the digest the log
                holds, computed as ``RobustAPI`` does; a file whose pixels are not a
                logged image is not used.
            title: the page title (default "Certified predictions").
            plot: False leaves the plot out.

        Returns:
            The HTML text.

        Raises:
            InvalidParameterError: ``images`` is of another type or names a missing path.
        """
        from .html import find_images, render_html

        files = find_images(images, self.rows)
        text = render_html(self, files, title=title, plot=plot)
        if path is not None:
            with open(path, "w", encoding="utf-8", newline="") as handle:
                handle.write(text)
        return text


def check_plot_path(path: Union[str, os.PathLike]) -> None:
    """Refuse, before any work (an analysis included), a plot path that :meth:`AnalysisReport.plot`
    cannot write: another suffix than .pdf, .svg or .png, or a missing matplotlib.

    Raises:
        InvalidParameterError: the suffix is not .pdf, .svg or .png (the file type follows it).
        MissingDependencyError: matplotlib is not installed.
    """
    check_plot_format(path)


def _blank(value: Any) -> Any:
    return "" if value is None else value
