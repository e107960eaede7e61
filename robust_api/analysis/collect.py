"""From query logs to one row per certified image: the re-certification that ``analyze`` runs.

Fixed-N calls (cohen, top2) are re-certified from vote counts (:meth:`QueryLog.call_summaries`,
computed in SQL for the SQLite store) with :func:`robust_api.offline.fixed_n_outcome`, the rule
``certify_from_log`` applies; sequential calls are replayed record by record with
``certify_from_log`` itself. Nothing here queries a provider.
"""

from __future__ import annotations

import csv
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
        queries: queries paid for by this call, plus those of later runs of the same call
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
    queries paid by predict calls (clean labels included) and by certify calls that did not
    complete, which no row counts."""

    rows: list
    clean_labels: dict
    skipped: Counter
    predict_queries: int = 0
    predict_cost_usd: float = 0.0
    incomplete_queries: int = 0
    incomplete_cost_usd: float = 0.0


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
    common = dict(
        source=source, run_id=header.run_id, image=header.image_digest, provider=header.provider,
        model_version=header.model_version, denoiser=header.denoiser_id or "none", noise_sd=float(header.noise_sd),
        method=method, settings=_settings_text(params, selection_is_clean), queries=summary.paid,
        cost_usd=summary.cost_usd,
    )
    if method not in ("cohen", "top2") or (selection_is_clean and clean.samples != 1):
        # the sequential rule replays the records in order (counts are not enough); any other
        # method name is refused there rather than given a fixed-N bound it may not deserve
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


def _repeat_key(header, row: CertifiedImage) -> tuple:
    """Calls with equal keys certify the same image in the same table row: one of them counts."""
    return (header.image_digest, header.provider, header.model_version, header.denoiser_id, header.denoiser_digest,
            header.noise_sd, row.method, row.settings, row.alpha)


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
            source=os.fspath(path), run_id=None, image=f"{os.fspath(path)}#{row.idx}",
            provider=f"tsv:{os.fspath(path)}", model_version=None, denoiser="-", noise_sd=None, method="cohen",
            settings="-", alpha=None, label=row.predicted,
            # the file printed a rounded radius: count only what it certainly certified
            radius=row.radius_lower if row.predicted is not None else 0.0, p_lower=None,
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
        method and budget (a rerun that reused the log), only the earliest certificate is
        kept (``skipped["repeat"]``), so no image counts twice and no rerun can replace a
        result; the queries all of them paid are added to the row kept. A call found in two
        sources (a log and its export) is read once (``skipped["duplicate"]``). Clean labels are the most frequent clean answer per (image,
        provider, model version) over predict calls with noise_sd = 0 and clean selections;
        a tie leaves the image without one.
    """
    kept: dict[tuple, tuple[float, int, CertifiedImage]] = {}
    tsv_rows: list[CertifiedImage] = []
    clean_votes: dict[tuple, Counter] = {}
    skipped: Counter = Counter()
    seen_runs: set[str] = set()
    spent = Counter()
    order = 0

    def visit(name: str, summary: CallSummary, load: Callable[[str], CallLog]) -> None:
        nonlocal order
        header = summary.header
        if header.run_id in seen_runs:  # the same call in two sources (a log and its export)
            skipped["duplicate"] += 1
            return
        seen_runs.add(header.run_id)
        clean = summary.phase("clean")
        if clean.samples:
            clean_votes.setdefault((header.image_digest, header.provider, header.model_version), Counter()).update(
                clean.votes)
        if header.kind != "certify":
            spent["predict_queries"] += summary.paid
            spent["predict_cost_usd"] += summary.cost_usd
            return
        if summary.status != "complete":
            skipped["incomplete"] += 1
            spent["incomplete_queries"] += summary.paid
            spent["incomplete_cost_usd"] += summary.cost_usd
            return
        row = _row_from_summary(summary, name, alpha, load)
        order += 1
        key = _repeat_key(header, row)
        if key in kept:
            skipped["repeat"] += 1
            earlier_created, earlier_order, earlier = kept[key]
            # the earliest complete call counts, whatever the results: a rerun cannot replace it
            # (so rerunning until a certificate looks better changes nothing); all of them paid
            first = earlier if (earlier_created, earlier_order) <= (header.created, order) else row
            kept[key] = (min(earlier_created, header.created), min(earlier_order, order),
                         replace(first, queries=earlier.queries + row.queries, cost_usd=earlier.cost_usd + row.cost_usd))
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
    return Collected(rows + tsv_rows, clean_labels, skipped, int(spent["predict_queries"]),
                     float(spent["predict_cost_usd"]), int(spent["incomplete_queries"]),
                     float(spent["incomplete_cost_usd"]))


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
    if not path.is_file():
        raise InvalidInputError(f"no labels CSV at {os.fspath(path)!r} (pass a file, e.g. examples/images/LABELS.csv)")
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            return _read_labels(path, csv.DictReader(handle), label_column)
    except (UnicodeDecodeError, csv.Error) as exc:
        raise InvalidInputError(f"{path} is not a UTF-8 CSV file ({exc})") from None


def _read_labels(path: Path, reader: csv.DictReader, label_column: Optional[str]) -> dict[str, str]:
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
        label, digest, name = row.get(label_column), row.get("image_digest"), row.get("file")
        if not label or not (digest or name):
            raise InvalidInputError(f"{path}, line {line}: an image ('file' or 'image_digest') and a label are needed")
        if digest:
            digest = digest.strip().lower()
        else:
            image_path = path.parent / name
            if not image_path.is_file():
                raise InvalidInputError(f"{path}, line {line}: no image at {image_path}")
            digest = image_digest(as_image(image_path))
        labels[digest] = label.strip()
    return labels
