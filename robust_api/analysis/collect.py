"""From query logs to one row per certified image: the re-certification that ``analyze`` runs.

Fixed-N calls (cohen, top2) are re-certified from vote counts (:meth:`QueryLog.call_summaries`,
computed in SQL for the SQLite store) with :func:`robust_api.offline.fixed_n_outcome`, the rule
``certify_from_log`` applies; sequential calls are replayed record by record with
``certify_from_log`` itself. Nothing here queries a provider.
"""

from __future__ import annotations

import csv
import json
import os
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Optional, Union

from ..errors import InvalidInputError, LogMismatchError
from ..images import as_image, image_digest
from ..offline import DEFAULT_ALPHA, certify_from_log, fixed_n_outcome
from ..query_logs import CallLog, QueryLog, SQLiteQueryLog, open_log
from ..query_logs.records import CallSummary, summarize_call
from ..results import ABSTAIN
from ..statistics import top_label
from ..validation import check_alpha, check_noise_sd

__all__ = ["CertifiedImage", "Collected", "collect", "load_labels", "TSV_SUFFIXES", "LOG_SUFFIXES"]

#: Files read as the predecessor's certification output (``idx correct radius label predict``).
TSV_SUFFIXES = (".tsv", ".txt")

Source = Union[str, os.PathLike, QueryLog, Iterable[CallLog]]


@dataclass(frozen=True)
class CertifiedImage:
    """One certified image: a certify call re-certified offline, or one row of a predecessor TSV.

    Attributes:
        source: the log (path) or TSV the row came from.
        run_id: the call's run id (None for TSV rows).
        image: the image digest (hex SHA-256; TSV rows: ``"<file>#<idx>"``).
        provider, model_version: the provider identity and model version of the call.
        denoiser: the denoiser id, or "none".
        noise_sd: σ (None when a TSV does not say).
        method: "cohen", "top2" or "sequential".
        settings: the budget as text, e.g. "N0=20 N=100", "clean N=100", "r=0.25 N<=400".
        alpha: α the certificate holds at (None when a TSV does not say).
        label: the certified label, or None for an abstention.
        radius: the certified L2 radius (0.0 on abstention).
        p_lower: the bound p̲_A (None for TSV rows).
        samples: queries the method used, paid or reused (None for TSV rows).
        queries: queries paid for by this call, plus those of earlier runs of the same call
            that the analysis left out as repeats (reused answers are free; None for TSV rows).
        cost_usd: what those queries cost at the logged prices (None for TSV rows).
        clean_label: the provider's own label on the clean image, when the logs hold one.
        truth: the ground truth this analysis compares with (None when unknown).
    """

    source: str
    run_id: Optional[str]
    image: str
    provider: str
    model_version: Optional[str]
    denoiser: str
    noise_sd: Optional[float]
    method: str
    settings: str
    alpha: Optional[float]
    label: Optional[str]
    radius: float
    p_lower: Optional[float]
    samples: Optional[int]
    queries: Optional[int]
    cost_usd: Optional[float]
    clean_label: Optional[str] = None
    truth: Optional[str] = None

    @property
    def abstained(self) -> bool:
        return self.label is None

    @property
    def correct(self) -> bool:
        """Certified (not abstained) with the ground-truth label."""
        return self.label is not None and self.truth is not None and self.label == self.truth


@dataclass
class Collected:
    """What :func:`collect` read: the rows, the clean labels, what it left out and why, and the
    queries paid by predict calls (clean labels included), which certify rows do not count."""

    rows: list
    clean_labels: dict
    skipped: Counter
    predict_queries: int = 0
    predict_cost_usd: float = 0.0


def _settings_text(params: dict, selection_is_clean: bool) -> str:
    method = params.get("method", "cohen")
    if method == "sequential":
        target = params.get("radius")
        return (f"r={target:g} " if target is not None else "") + f"N<={params.get('N')}"
    chosen = "clean" if selection_is_clean else f"N0={params.get('N0')}"
    return f"{chosen} N={params.get('N')}"


def _row_from_summary(summary: CallSummary, source: str, alpha: Optional[float],
                      load: Callable[[str], CallLog]) -> CertifiedImage:
    header = summary.header
    params = header.params or {}
    method = params.get("method", "cohen")
    clean, selection, estimation = (summary.phase(name) for name in ("clean", "selection", "estimation"))
    selection_is_clean = clean.samples > 0 and selection.samples == 0
    paid = sum(p.paid for p in summary.phases.values())
    cost = sum(p.cost_usd for p in summary.phases.values())
    common = dict(
        source=source, run_id=header.run_id, image=header.image_digest, provider=header.provider,
        model_version=header.model_version, denoiser=header.denoiser_id or "none", noise_sd=float(header.noise_sd),
        method=method, settings=_settings_text(params, selection_is_clean), queries=paid, cost_usd=cost,
    )
    if method == "sequential" or (selection_is_clean and clean.samples != 1):
        # the sequential rule replays the records in order; counts are not enough
        cert = certify_from_log(load(header.run_id), alpha=alpha)
        return CertifiedImage(
            alpha=cert.alpha, label=None if cert.label is ABSTAIN else cert.label, radius=cert.radius,
            p_lower=cert.p_lower, samples=cert.samples, **common,
        )
    alpha = check_alpha(params.get("alpha", DEFAULT_ALPHA) if alpha is None else alpha)
    sigma = check_noise_sd(header.noise_sd, allow_zero=False)
    selection_counts = clean.votes if selection_is_clean else selection.votes
    if not (clean.samples if selection_is_clean else selection.samples):
        raise LogMismatchError(f"call {header.run_id} holds no selection sample (the call was interrupted early?)")
    used_for_selection = 1 if selection_is_clean else selection.samples
    if top_label(selection_counts) is None:
        return CertifiedImage(alpha=alpha, label=None, radius=0.0, p_lower=0.0, samples=used_for_selection, **common)
    outcome = fixed_n_outcome(method, selection_counts, estimation.votes, estimation.samples, sigma, alpha,
                              header.run_id)
    return CertifiedImage(alpha=alpha, label=outcome.label, radius=outcome.radius, p_lower=outcome.p_lower,
                          samples=used_for_selection + outcome.n, **common)


def _repeat_key(header) -> tuple:
    return (header.image_digest, header.provider, header.model_version, header.denoiser_id, header.denoiser_digest,
            header.noise_sd, json.dumps(header.params, sort_keys=True))


def _rows_of(source: Source, visit: Callable[[str, CallSummary, Callable], None]) -> None:
    """Call ``visit(name, summary, load)`` for every call of one source (closing what it opened)."""
    if isinstance(source, (str, os.PathLike)):
        log = open_log(source)
        if isinstance(log, SQLiteQueryLog):
            def load(run_id: str) -> CallLog:  # replays read labels and errors, never raw responses
                return log.load_call(run_id, with_raw=False)
        else:
            load = log.load_call
        try:
            for summary in log.call_summaries():
                visit(os.fspath(source), summary, load)
        finally:
            log.close()
    elif isinstance(source, QueryLog):
        name = os.fspath(source.path) if source.path is not None else "<memory log>"
        for summary in source.call_summaries():
            visit(name, summary, source.load_call)
    else:
        if isinstance(source, CallLog):
            source = [source]
        try:
            calls = {call.header.run_id: call for call in source}
        except (TypeError, AttributeError):
            raise InvalidInputError(
                f"analysis sources are log paths, QueryLogs or iterables of CallLog; got {type(source).__name__}"
            ) from None
        for call in calls.values():
            visit("<calls>", summarize_call(call), calls.__getitem__)


def _tsv_rows(path: Path) -> list[CertifiedImage]:
    from ..query_logs.legacy import read_legacy_tsv

    rows = []
    for row in read_legacy_tsv(path):
        rows.append(CertifiedImage(
            source=os.fspath(path), run_id=None, image=f"{path.name}#{row.idx}", provider=f"tsv:{path.name}",
            model_version=None, denoiser="-", noise_sd=None, method="cohen", settings="-", alpha=None,
            label=row.predicted, radius=float(row.radius) if row.predicted is not None else 0.0, p_lower=None,
            samples=None, queries=None, cost_usd=None, clean_label=None, truth=row.true_label,
        ))
    return rows


#: Files a folder source contributes: every query log and predecessor TSV directly in it.
LOG_SUFFIXES = (".sqlite3", ".sqlite", ".db", ".jsonl", ".parquet")


def _expand_folders(sources: Iterable[Source]) -> Iterable[Source]:
    for source in sources:
        if isinstance(source, (str, os.PathLike)) and Path(source).is_dir():
            found = sorted(p for p in Path(source).iterdir()
                           if p.is_file() and p.suffix.lower() in LOG_SUFFIXES + TSV_SUFFIXES)
            if not found:
                raise FileNotFoundError(
                    f"no query logs in folder {os.fspath(source)!r} (looked for {', '.join(LOG_SUFFIXES + TSV_SUFFIXES)})"
                )
            yield from found
        else:
            yield source


def collect(sources: Iterable[Source], alpha: Optional[float] = None) -> Collected:
    """Re-certify every certify call of ``sources`` offline and gather the clean-image labels.

    Args:
        sources: paths (SQLite log, ``.jsonl`` / ``.parquet`` export, predecessor TSV
            ``.tsv``/``.txt``, or a folder: every such file directly in it), :class:`QueryLog`
            objects, or iterables of :class:`CallLog`.
        alpha: None re-certifies each call at its logged α; a float uses that α for all
            (decide it before looking at results: see the soundness notes).

    Returns:
        A :class:`Collected`. Calls that did not complete are left out (``skipped["incomplete"]``);
        of several complete calls with the same image, provider, model, denoiser, σ and
        parameters (a rerun that reused the log), only the latest certificate is kept
        (``skipped["repeat"]``), so no image counts twice; the queries all of them paid are
        added to the row kept. Clean labels are the most frequent clean answer per (image,
        provider, model version) over predict calls with noise_sd = 0 and clean selections;
        a tie leaves the image without one.
    """
    kept: dict[tuple, tuple[float, int, CertifiedImage]] = {}
    tsv_rows: list[CertifiedImage] = []
    clean_votes: dict[tuple, Counter] = {}
    skipped: Counter = Counter()
    predict_queries, predict_cost = 0, 0.0
    order = 0

    def visit(name: str, summary: CallSummary, load: Callable[[str], CallLog]) -> None:
        nonlocal order, predict_queries, predict_cost
        header = summary.header
        clean = summary.phase("clean")
        if clean.samples:
            clean_votes.setdefault((header.image_digest, header.provider, header.model_version), Counter()).update(
                clean.votes)
        if header.kind != "certify":
            predict_queries += sum(p.paid for p in summary.phases.values())
            predict_cost += sum(p.cost_usd for p in summary.phases.values())
            return
        if summary.status != "complete":
            skipped["incomplete"] += 1
            return
        row = _row_from_summary(summary, name, alpha, load)
        order += 1
        key = _repeat_key(header)
        if key in kept:
            skipped["repeat"] += 1
            earlier = kept[key][2]
            # what every call paid is spent, whichever certificate is kept
            paid = dict(queries=earlier.queries + row.queries, cost_usd=earlier.cost_usd + row.cost_usd)
            row = replace(row if (header.created, order) >= kept[key][:2] else earlier, **paid)
            if row.run_id == earlier.run_id:
                kept[key] = (*kept[key][:2], row)
                return
        kept[key] = (header.created, order, row)

    if isinstance(sources, (str, os.PathLike, QueryLog, CallLog)):
        sources = [sources]
    for source in _expand_folders(sources):
        if isinstance(source, (str, os.PathLike)) and Path(source).suffix.lower() in TSV_SUFFIXES:
            tsv_rows.extend(_tsv_rows(Path(source)))
        else:
            _rows_of(source, visit)
    clean_labels = {}
    for key, votes in clean_votes.items():
        ranked = votes.most_common(2)
        if ranked and (len(ranked) == 1 or ranked[0][1] > ranked[1][1]):
            clean_labels[key] = top_label(votes)
    rows = [entry[2] for entry in sorted(kept.values(), key=lambda entry: entry[1])]
    rows = [replace(row, clean_label=clean_labels.get((row.image, row.provider, row.model_version))) for row in rows]
    return Collected(rows + tsv_rows, clean_labels, skipped, predict_queries, predict_cost)


def load_labels(path: Union[str, os.PathLike], label_column: Optional[str] = None) -> dict[str, str]:
    """Read true labels from a CSV file: image digest → label.

    Args:
        path: a CSV with a header row. Images are named by an ``image_digest`` column (hex
            SHA-256 as in the log) or a ``file`` column (an image path relative to the CSV,
            read and digested exactly as ``RobustAPI`` does).
        label_column: the column holding the label; default ``class_name`` when present,
            else ``label``. Labels must be spelled as the provider answers (e.g. "Trouser").

    Raises:
        InvalidInputError: missing columns or files, with what to fix.
    """
    path = Path(path)
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        columns = reader.fieldnames or []
        if label_column is None:
            label_column = "class_name" if "class_name" in columns else "label"
        if label_column not in columns or not ({"file", "image_digest"} & set(columns)):
            raise InvalidInputError(
                f"{path}: a labels CSV needs a 'file' or 'image_digest' column and a {label_column!r} column; "
                f"it has {columns}"
            )
        labels = {}
        for line, row in enumerate(reader, start=2):
            if row.get("image_digest"):
                digest = row["image_digest"].strip().lower()
            else:
                image_path = path.parent / row["file"]
                if not image_path.is_file():
                    raise InvalidInputError(f"{path}, line {line}: no image at {image_path}")
                digest = image_digest(as_image(image_path))
            labels[digest] = row[label_column].strip()
    return labels
