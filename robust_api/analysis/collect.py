"""From query logs to one row per certified image: the re-certification that ``analyze`` runs.

Fixed-N calls (cohen, top2) are re-certified from vote counts (:meth:`QueryLog.call_summaries`,
computed in SQL for the SQLite store) with :func:`robust_api.certification.certify_from_votes`,
the function every certificate comes from; sequential calls are replayed record by record
with ``certify_from_log``, which calls it on the votes in sample order. Nothing here queries a provider.
"""

from __future__ import annotations

import csv
import math
import os
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Optional, Union

from ..errors import InvalidInputError, LogMismatchError
from ..images import as_image, image_digest
from ..certification import certify_from_votes
from ..offline import DEFAULT_ALPHA, certify_from_log
from ..query_logs import CallLog, QueryLog, SQLiteQueryLog, open_log
from ..query_logs.records import CallSummary, summarize_call
from ..results import ABSTAIN
from ..statistics import top_label
from ..validation import check_alpha, check_noise_sd

__all__ = ["CertifiedImage", "IncompleteCall", "Collected", "collect", "load_labels", "TSV_SUFFIXES", "LOG_SUFFIXES"]

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
        cost_usd: what those queries cost at the logged prices (None for TSV rows, and when
            ``invalid_costs`` > 0: the total is unknown).
        clean_label: the provider's own label on the clean image, when the logs hold one.
        truth: the ground truth this analysis compares with (None when unknown).
        invalid_costs: records of these calls whose logged cost is not a valid price (NaN,
            infinite, negative, not a number, or above ``MAX_LOGGED_COST_USD``).
        image_name: the image's name as the call's header records it (e.g. its file name;
            TSV rows: ``"<file name>#<idx>"``), None when the log does not say. Text from a
            log: escape it before putting it in HTML or LaTeX.
        image_shape: (H, W, C) of the certified image as logged (None when unknown).
        target_radius: the target radius of a sequential call (it certifies that radius, so
            its curve ends there), else None.
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
    invalid_costs: int = 0
    image_name: Optional[str] = None
    image_shape: Optional[tuple] = None
    target_radius: Optional[float] = None

    @property
    def display_name(self) -> str:
        """The image's logged name, else the first 12 hex digits of its digest."""
        return self.image_name or self.image[:12]

    @property
    def abstained(self) -> bool:
        return self.label is None

    @property
    def correct(self) -> bool:
        """Certified (not abstained) with the ground-truth label."""
        return self.label is not None and self.truth is not None and self.label == self.truth


@dataclass(frozen=True)
class IncompleteCall:
    """A certify call the analysis left out because it did not complete or has a gap.

    Attributes:
        source: the log (path) it came from.
        run_id: the call's run id.
        image: the image digest.
        provider: the provider identity.
        status: "running" (interrupted, or still in progress), "failed", or "complete" for a
            call marked complete whose samples have a gap (the log was edited or damaged).
        phases: phase → (samples logged, indices missing below the highest logged one).
        queries: queries the call paid for.
        cost_usd: what they cost at the logged prices (None: a logged cost is not a valid price).
        reason: why it was left out, in words.
    """

    source: str
    run_id: str
    image: str
    provider: str
    status: str
    phases: dict
    queries: int
    cost_usd: Optional[float]
    reason: str

    @property
    def damaged(self) -> bool:
        """Marked complete, yet samples are missing: never in an honest log."""
        return self.status == "complete"

    def describe(self) -> str:
        """One line: run id, status, what each phase holds, what the call paid."""
        parts = []
        for phase, (samples, missing) in self.phases.items():
            gap = f" ({missing} missing below index {samples + missing - 1})" if missing else ""
            parts.append(f"{phase} {samples}{gap}")
        cost = "unknown (invalid costs logged)" if self.cost_usd is None else f"{self.cost_usd:.2f}"
        return (f"{self.run_id} ({self.status}): {', '.join(parts) or 'no samples'}; "
                f"paid {self.queries} queries, USD {cost}")


@dataclass
class Collected:
    """What :func:`collect` read: the rows, the clean labels, what it left out and why, and the
    queries paid by predict calls (clean labels included) and by certify calls that did not
    complete or have gaps (``incomplete``, listed one by one), which no row counts. A cost is
    None when some logged cost behind it is not a valid price; ``invalid_cost_calls`` names
    those calls."""

    rows: list
    clean_labels: dict
    skipped: Counter
    predict_queries: int = 0
    predict_cost_usd: Optional[float] = 0.0
    incomplete_queries: int = 0
    incomplete_cost_usd: Optional[float] = 0.0
    incomplete: list = field(default_factory=list)
    invalid_cost_calls: list = field(default_factory=list)


def _add_cost(total: Optional[float], cost: Optional[float]) -> Optional[float]:
    """A running total that stays unknown (None) once one part is unknown."""
    return None if total is None or cost is None else total + cost


def _settings_text(params: dict, selection_is_clean: bool) -> str:
    method = params.get("method", "cohen")
    if method == "sequential":
        target = params.get("radius")
        return (f"r={target:g} " if target is not None else "") + f"N<={params.get('N')}"
    chosen = "clean" if selection_is_clean else f"N0={params.get('N0')}"
    return f"{chosen} N={params.get('N')}"


def _image_name(header) -> Optional[str]:
    """The image name the call's header records (``CallHeader.image_name``, or the
    ``"image_name"`` entry of its params in logs written before that property), if a string."""
    name = getattr(header, "image_name", None)
    if name is None and isinstance(header.params, dict):
        name = header.params.get("image_name")
    return name if isinstance(name, str) and name else None


def _target_radius(method: str, params: dict) -> Optional[float]:
    """The target radius of a sequential call (None without one, or for other methods)."""
    target = params.get("radius") if method == "sequential" else None
    if isinstance(target, bool) or not isinstance(target, (int, float)) or not math.isfinite(target) or target <= 0:
        return None
    return float(target)


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
        cost_usd=summary.cost_usd, invalid_costs=summary.invalid_costs, image_name=_image_name(header),
        image_shape=tuple(header.image_shape or ()) or None, target_radius=_target_radius(method, params),
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
    outcome = certify_from_votes(selection_counts, estimation.votes, sigma, alpha, method=method,
                                 n=estimation.samples, run_id=header.run_id)
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
            image_name=f"{path.name}#{row.idx}",
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
        A :class:`Collected`. Calls that did not complete are left out (``skipped["incomplete"]``),
        and so are calls marked complete whose samples have a gap (``skipped["damaged"]``: the
        log was edited or damaged); both are listed in ``incomplete`` with what they paid, and
        none is ever certified from the samples it has. Of several complete calls with the
        same image, provider, model, denoiser, σ and method and budget (a rerun that reused
        the log), only the earliest certificate is kept (``skipped["repeat"]``), so no image
        counts twice and no rerun can replace a result; the queries all of them paid are
        added to the row kept. A call found in two sources (a log and its export) is read
        once (``skipped["duplicate"]``). Clean labels are the most frequent clean answer per
        (image, provider, model version) over predict calls with noise_sd = 0 and clean
        selections; a tie leaves the image without one. A call whose logged costs include
        one that is not a valid price is named in ``invalid_cost_calls``, and every total
        it belongs to is None (unknown) rather than a wrong number.
    """
    kept: dict[tuple, tuple[float, int, CertifiedImage]] = {}
    tsv_rows: list[CertifiedImage] = []
    clean_votes: dict[tuple, Counter] = {}
    skipped: Counter = Counter()
    seen_runs: set[str] = set()
    out = Collected([], {}, skipped)
    order = 0

    def visit(name: str, summary: CallSummary, load: Callable[[str], CallLog]) -> None:
        nonlocal order
        header = summary.header
        if header.run_id in seen_runs:  # the same call in two sources (a log and its export)
            skipped["duplicate"] += 1
            return
        seen_runs.add(header.run_id)
        if summary.invalid_costs:
            out.invalid_cost_calls.append(header.run_id)
        clean = summary.phase("clean")
        if clean.samples:
            clean_votes.setdefault((header.image_digest, header.provider, header.model_version), Counter()).update(
                clean.votes)
        if header.kind != "certify":
            out.predict_queries += summary.paid
            out.predict_cost_usd = _add_cost(out.predict_cost_usd, summary.cost_usd)
            return
        if summary.status != "complete" or summary.missing:
            # an interrupted call (a gap is honest there) or a damaged one: listed, never certified
            # from the samples it happens to have
            out.incomplete.append(_incomplete(summary, name))
            skipped["incomplete" if summary.status != "complete" else "damaged"] += 1
            out.incomplete_queries += summary.paid
            out.incomplete_cost_usd = _add_cost(out.incomplete_cost_usd, summary.cost_usd)
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
                         replace(first, queries=earlier.queries + row.queries,
                                 cost_usd=_add_cost(earlier.cost_usd, row.cost_usd),
                                 invalid_costs=earlier.invalid_costs + row.invalid_costs))
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
    out.rows, out.clean_labels = rows + tsv_rows, clean_labels
    return out


_PHASE_ORDER = {"clean": 0, "selection": 1, "estimation": 2, "predict": 3}


def _incomplete(summary: CallSummary, source: str) -> IncompleteCall:
    header = summary.header
    missing = summary.missing
    if summary.status == "complete":
        reason = (f"marked complete, yet {missing} sample(s) are missing: the log was edited or damaged; "
                  "not certified")
    else:
        what = "is still running or was interrupted" if summary.status == "running" else f"ended {summary.status}"
        gap = f", with {missing} sample(s) missing (batches in flight when it stopped)" if missing else ""
        reason = f"the call {what}{gap}; not certified"
    return IncompleteCall(
        source=source, run_id=header.run_id, image=header.image_digest, provider=header.provider,
        status=summary.status,
        phases={name: (votes.samples, votes.missing)
                for name, votes in sorted(summary.phases.items(), key=lambda item: _PHASE_ORDER.get(item[0], 9))},
        queries=summary.paid, cost_usd=summary.cost_usd, reason=reason,
    )


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
