"""Offline analysis of query logs: certified accuracy at chosen radii, curves, average certified
radius, abstention, queries and dollars, grouped by provider, denoiser, σ and method.

    report = robust_api.analyze("query_logs/", labels="examples/images/LABELS.csv")
    print(report.table()); report.plot("accuracy.svg")     # or .pdf / .png
    report.to_latex(); report.to_html("report.html", images="examples/images/")

Nothing here sends a query: certify calls are re-certified from their records
(``robust_api.offline``), so a log can be re-analysed anywhere, with no provider SDK,
denoiser or GPU.
"""

from __future__ import annotations

import os
from dataclasses import replace
from collections.abc import Iterable, Sequence
from typing import Any, Optional, Union

from ..errors import InvalidParameterError
from ..query_logs import CallLog, QueryLog
from ..validation import check_alpha, check_radius
from .collect import CertifiedImage, IncompleteCall, collect, load_labels
from .metrics import average_certified_radius, certified_accuracy, certified_accuracy_curve
from .labels import group_labels
from .latex import latex_escape
from .plots import Curve
from .report import GROUP_FIELDS, AnalysisReport, GroupSummary, check_plot_path, summarize_group

__all__ = [
    "analyze",
    "AnalysisReport",
    "GroupSummary",
    "CertifiedImage",
    "IncompleteCall",
    "load_labels",
    "certified_accuracy",
    "average_certified_radius",
    "certified_accuracy_curve",
    "DEFAULT_RADII",
    "DEFAULT_GROUP_BY",
    "GROUP_FIELDS",
    "Curve",
    "check_plot_path",
    "group_labels",
    "latex_escape",
]

#: The radii of the papers' tables.
DEFAULT_RADII = (0.0, 0.25, 0.5, 0.75, 1.0)
#: The default grouping: one table row per provider, denoiser, σ, method (with its budget) and α.
DEFAULT_GROUP_BY = ("provider", "denoiser", "noise_sd", "method", "settings", "alpha")
TRUTHS = ("labels", "clean")


def _check_radii(radii: Sequence[float]) -> tuple[float, ...]:
    try:
        values = tuple(0.0 if r == 0 else float(check_radius(r)) for r in radii)
    except (TypeError, InvalidParameterError):
        raise InvalidParameterError(f"radii must be a sequence of finite numbers >= 0, got {radii!r}") from None
    if not values:
        raise InvalidParameterError("radii must name at least one radius, e.g. (0.0, 0.25, 0.5)")
    return values


def _check_by(by: Union[str, Sequence[str]]) -> tuple[str, ...]:
    fields = (by,) if isinstance(by, str) else tuple(by)
    unknown = [name for name in fields if name not in GROUP_FIELDS]
    if unknown:
        raise InvalidParameterError(f"cannot group by {unknown}; choose from {', '.join(GROUP_FIELDS)}")
    return fields


def analyze(
    sources: Any,
    labels: Union[str, os.PathLike, dict, None] = None,
    truth: Optional[str] = None,
    radii: Sequence[float] = DEFAULT_RADII,
    by: Union[str, Sequence[str]] = DEFAULT_GROUP_BY,
    alpha: Optional[float] = None,
) -> AnalysisReport:
    """Re-certify every certify call in ``sources`` offline and summarize the certificates.

    Args:
        sources: one or a list of: a query log path (SQLite file, ``.jsonl`` or ``.parquet``
            export, or a folder: every log and TSV directly in it), a predecessor certification TSV (``.tsv``/``.txt``: columns
            ``idx correct radius label predict``, or Cohen et al.'s ``idx label predict radius
            correct``), a :class:`~robust_api.QueryLog`, or an iterable of
            :class:`~robust_api.CallLog`.
        labels: true labels: a CSV (see :func:`load_labels`) or a dict image digest → label.
        truth: "labels" (compare with ``labels``; the default when given) or "clean" (the
            provider's own label on the clean image, the paper's convention; the default
            otherwise). TSV rows always use their own ``label`` column.
        radii: radii r ≥ 0 of the accuracy columns (default 0, 0.25, 0.5, 0.75, 1).
        by: fields to group by, from :data:`GROUP_FIELDS`.
        alpha: None re-certifies each call at its logged α (what was reported online).
            Another α is valid only if chosen before looking at results; re-analysing at
            several α and keeping the best is multiple testing.

    Returns:
        An :class:`AnalysisReport`: ``.rows``, ``.groups``, ``.table()``, ``.to_csv()``,
        ``.to_json()``, ``.plot()``, ``.to_latex()``, ``.to_html()``; ``.incomplete`` lists
        the certify calls left out because they did not complete or have a gap (never
        certified from what they hold), with what they paid; ``.invalid_cost_calls`` names calls whose logged costs are not valid
        prices (their dollars are reported unknown, never summed). Each certificate carries
        its own guarantee (probability ≥ 1 − α per image); the accuracies are empirical
        fractions over images, not bounds.

    Raises:
        InvalidParameterError: unknown ``truth`` or ``by`` field, bad radii or α, or
            ``truth="labels"`` without ``labels``.
        QueryLogError: a source is not a log, or a log contradicts itself (a duplicated
            sample index: :class:`LogIntegrityError`). A gap in a call is not refused.
    """
    radii = _check_radii(radii)
    by = _check_by(by)
    if alpha is not None:
        alpha = check_alpha(alpha)
    if truth is None:
        truth = "labels" if labels is not None else "clean"
    if truth not in TRUTHS:
        raise InvalidParameterError(f"truth must be 'labels' or 'clean', got {truth!r}")
    if truth == "labels" and labels is None:
        raise InvalidParameterError("truth='labels' needs labels= (a CSV of image file or digest and label)")
    true_labels = labels if isinstance(labels, dict) or labels is None else load_labels(labels)
    if isinstance(sources, (str, os.PathLike, QueryLog, CallLog)) or not isinstance(sources, Iterable):
        sources = [sources]
    sources = list(sources)
    collected = collect(sources, alpha=alpha)
    rows = []
    for row in collected.rows:
        if row.run_id is not None:  # TSV rows keep their own ground truth
            chosen = true_labels.get(row.image) if truth == "labels" else row.clean_label
            row = replace(row, truth=chosen)
        rows.append(row)
    groups: dict[tuple, list[CertifiedImage]] = {}
    for row in rows:
        groups.setdefault(tuple(getattr(row, name) for name in by), []).append(row)
    summaries = [
        summarize_group(dict(zip(by, key)), members, radii)
        for key, members in sorted(groups.items(), key=lambda item: [_order(v) for v in item[0]])
    ]
    if truth == "labels":
        description = f"true labels from {labels if not isinstance(labels, dict) else 'the labels given'}"
    else:
        description = "the provider's own label on the clean image (the paper's convention)"
    if any(row.run_id is None for row in rows):
        description += "; TSV rows: the file's label column"
    return AnalysisReport(
        rows=rows, groups=summaries, radii=radii, by=by, truth=truth, truth_description=description,
        sources=[os.fspath(s) if isinstance(s, (str, os.PathLike)) else type(s).__name__ for s in sources],
        skipped=collected.skipped, predict_queries=collected.predict_queries,
        predict_cost_usd=collected.predict_cost_usd, incomplete_queries=collected.incomplete_queries,
        incomplete_cost_usd=collected.incomplete_cost_usd, incomplete=collected.incomplete,
        invalid_cost_calls=collected.invalid_cost_calls,
    )


def _order(value: Any) -> tuple:
    return (value is None, isinstance(value, str), value if value is not None else 0)
