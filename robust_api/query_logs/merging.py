"""Merging query logs: the shards of a distributed run into one log, and each finished call of
a worker into the driver's log as soon as it is reported.

The log is the system of record, so a merge only ever adds: a call missing from the target
is copied whole; a call the target already holds gets the records it lacks (an older copy of
a call that was still running) and its status moves forward (``running`` → ``complete`` or
``failed``), never back. Merging the same calls again adds nothing.

What cannot be one call is refused with :class:`~robust_api.errors.LogConflictError` before
anything of the merge is written (every call is checked first, then written):

- one run id with two different headers (image digest, seed, σ, provider, params, ...);
- one sample (phase, sample index) of one run id with two different answers (label, raw
  answer, error, reused flag, cost);
- a finished copy (``complete`` or ``failed``) of a call that lacks a record another copy
  has (a finished call gains no records: extra votes would change its certificate), or two
  finished copies with different statuses.

:func:`merge_logs` also refuses inputs that are not one experiment
(:class:`~robust_api.errors.MixedExperimentsError`, see :func:`experiment_of`) unless
``allow_mixed=True``.

A merge is one transaction per written call, not one for the whole merge: a merge stopped
half-way (a crash, a full disk) leaves whole calls and calls still marked ``running``, and
running it again completes it.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Optional, Union

from ..errors import InvalidParameterError, LogConflictError, MixedExperimentsError
from .exchange import open_log
from .records import CALL_STATUSES, CallHeader, CallLog, QueryRecord, dumps_raw, record_order
from .store import QueryLog, open_store, resolve_log_path

__all__ = ["MergeReport", "merge_calls", "merge_logs", "experiment_of", "PER_IMAGE_PARAMS"]

#: Entries of ``CallHeader.params`` that describe one image, not the experiment: its name and
#: tag, and the predecessor file an imported call came from (``import_legacy``).
PER_IMAGE_PARAMS = frozenset({"image_name", "tag", "file", "legacy_index"})

#: The header fields that define an experiment, in the order a difference is reported.
_EXPERIMENT_FIELDS = ("kind", "provider", "model_version", "denoiser_id", "denoiser_digest", "noise_sd", "seed",
                      "preprocessing")
#: The fields every call of one run shares, whatever its kind (the classifier queried).
_RUN_FIELDS = ("provider", "model_version")
_HEADER_FIELDS = tuple(f.name for f in fields(CallHeader))
#: The fields of a record that make its answer (latency and timestamp are not compared).
_ANSWER_FIELDS = ("label", "error", "raw", "reused", "cost_usd")
_FINISHED = ("complete", "failed")
_FRESH_LOG_HINT = (
    "these are different runs under one run id (a copied, edited or forged log?); nothing was written. "
    "Keep them apart: merge each into a fresh log"
)
PathLike = Union[str, "os.PathLike[str]"]


@dataclass(frozen=True)
class MergeReport:
    """What a merge did.

    Attributes:
        calls_added: calls the target did not hold, copied whole.
        calls_extended: calls the target held that gained records or moved their status
            forward (``running`` → ``complete``/``failed``).
        calls_unchanged: calls the target already held as merged (nothing to add).
        records_added: query records written to the target, all calls.
        sources: where the calls came from, as given (file paths; empty for
            :func:`merge_calls` without ``source=``).
        into: the target log (its path, or its repr for a log without one); None when unknown.
    """

    calls_added: int
    calls_extended: int
    calls_unchanged: int
    records_added: int
    sources: list = field(default_factory=list)
    into: Optional[str] = None

    @property
    def calls(self) -> int:
        """Calls merged, whatever happened to them (added + extended + unchanged)."""
        return self.calls_added + self.calls_extended + self.calls_unchanged

    def to_dict(self) -> dict:
        """The report as plain data (what ``robust-api merge-logs --format json`` prints)."""
        return {
            "calls_added": self.calls_added, "calls_extended": self.calls_extended,
            "calls_unchanged": self.calls_unchanged, "records_added": self.records_added,
            "sources": list(self.sources), "into": self.into,
        }

    def __str__(self) -> str:
        where = f"{len(self.sources)} source{'s' if len(self.sources) != 1 else ''}" if self.sources else "calls"
        into = f" into {self.into}" if self.into else ""
        return (
            f"merged {self.calls} call{'s' if self.calls != 1 else ''} from {where}{into}: {self.calls_added} added, "
            f"{self.calls_extended} extended, {self.calls_unchanged} unchanged; {self.records_added} records added"
        )


# -- comparing values ------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    """``value`` as JSON data (tuples → lists, NumPy scalars → numbers), for comparisons."""
    try:
        return json.loads(json.dumps(value, default=_json_default, allow_nan=True))
    except (TypeError, ValueError, RecursionError):
        return repr(value)


def _json_default(obj: Any) -> Any:
    item = getattr(obj, "tolist", None)
    if callable(item):
        return item()
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    return repr(obj)


def _same(a: Any, b: Any) -> bool:
    """Equal as data: numbers by value (NaN equals NaN), containers element by element."""
    if a is b:
        return True
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    try:
        if a == b and type(a) is type(b):
            return True
    except Exception:  # an odd value whose comparison raises: compared as data below
        pass
    if isinstance(a, (bool, int, float)) and isinstance(b, (bool, int, float)):
        return isinstance(a, bool) == isinstance(b, bool) and a == b
    if isinstance(a, (str, bytes)) or isinstance(b, (str, bytes)) or a is None or b is None:
        return False
    return _canonical(a) == _canonical(b)


def _canonical(value: Any) -> str:
    return json.dumps(_plain(value), sort_keys=True, allow_nan=True)


def _same_raw(a: Any, b: Any) -> bool:
    if _same(a, b):
        return True
    try:  # as the store keeps it: JSON text of plain data
        return json.dumps(json.loads(dumps_raw(a)), sort_keys=True) == json.dumps(json.loads(dumps_raw(b)),
                                                                                 sort_keys=True)
    except Exception:  # not plain data (the store would refuse it anyway)
        return False


def _show(value: Any, limit: int = 80) -> str:
    """A value for a message: its repr (control characters escaped), cut to ``limit``."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _name_of(log: Any) -> str:
    path = getattr(log, "path", None)
    return os.fspath(path) if path is not None else repr(log)


# -- combining copies of calls ----------------------------------------------------------------


class _Plan:
    """Every copy of one run id seen so far: the header, the union of the records, the copies."""

    __slots__ = ("header", "origin", "records", "copies")

    def __init__(self, header: CallHeader, origin: str):
        self.header = header
        self.origin = origin
        self.records: dict[tuple, tuple[QueryRecord, str]] = {}
        self.copies: list[tuple[str, frozenset, str]] = []  # (status, keys, origin)

    def add(self, call: CallLog, origin: str) -> None:
        """Add one copy: its header and records must agree with what was seen (else LogConflictError)."""
        _check_header(self.header, self.origin, call.header, origin)
        keys = []
        for record in call.records:
            key = (record.phase, record.sample_index)
            keys.append(key)
            seen = self.records.get(key)
            if seen is None:
                self.records[key] = (record, origin)
            else:
                _check_answer(call.header.run_id, seen[0], seen[1], record, origin)
        self.copies.append((call.status, frozenset(keys), origin))

    def status(self) -> str:
        """The status the merged call has: finished when any copy is (checked by :meth:`check_finished`)."""
        for status, _, _ in self.copies:
            if status in _FINISHED:
                return status
        return "running"

    def check_finished(self) -> None:
        """A finished copy holds every record of the call, and finished copies agree on the status."""
        run = self.header.run_id[:12]
        finished = [(status, keys, origin) for status, keys, origin in self.copies if status in _FINISHED]
        for status, keys, origin in finished[1:]:
            if status != finished[0][0]:
                raise LogConflictError(
                    f"call {run} is {finished[0][0]} in {finished[0][2]} but {status} in {origin}: {_FRESH_LOG_HINT}"
                )
        for status, keys, origin in finished:
            if len(keys) == len(self.records):
                continue
            phase, index = min((key for key in self.records if key not in keys), key=_key_order)
            record, other = self.records[(phase, index)]
            raise LogConflictError(
                f"call {run} is {status} in {origin} with {len(keys)} records, but {other} has {phase} sample {index} "
                f"(label={_show(record.label)}) that the {status} copy lacks: a finished call gains no records "
                f"(they would change its votes); {_FRESH_LOG_HINT}"
            )


def _key_order(key: tuple) -> tuple:
    return record_order(QueryRecord(key[0], key[1], None, None, 0.0, 0.0, 0.0))


_ABSENT = object()


def _check_header(first: CallHeader, first_origin: str, other: CallHeader, origin: str) -> None:
    """Refuse (LogConflictError) two headers of one run id that differ in any field."""
    for name in _HEADER_FIELDS:
        a, b = getattr(first, name), getattr(other, name)
        if name == "image_shape":
            a, b = list(a), list(b)
        if _same(a, b):
            continue
        if name == "params" and isinstance(a, dict) and isinstance(b, dict):
            key = next(k for k in [*a, *(k for k in b if k not in a)]
                       if not _same(a.get(k, _ABSENT), b.get(k, _ABSENT)))
            name, a, b = f"params[{key!r}]", a.get(key, _ABSENT), b.get(key, _ABSENT)
        raise LogConflictError(
            f"call {first.run_id[:12]} has {_has(name, b)} in {origin} but {_has(name, a)} in {first_origin}: "
            f"{_FRESH_LOG_HINT}"
        )


def _has(name: str, value: Any) -> str:
    """"N=100", or "no N" for an absent entry."""
    return f"no {name}" if value is _ABSENT else f"{name}={_show(value)}"


def _check_answer(run_id: str, first: QueryRecord, first_origin: str, other: QueryRecord, origin: str) -> None:
    for name in _ANSWER_FIELDS:
        a, b = getattr(first, name), getattr(other, name)
        same = _same_raw(a, b) if name == "raw" else _same(bool(a), bool(b)) if name == "reused" else _same(a, b)
        if not same:
            raise LogConflictError(
                f"call {run_id[:12]}: {other.phase} sample {other.sample_index} has {name}={_show(b)} in {origin} "
                f"but {name}={_show(a)} in {first_origin}: {_FRESH_LOG_HINT}"
            )


def _combine(items: Iterable[tuple[CallLog, str]]) -> dict[str, _Plan]:
    """The copies of every run id among ``items`` ((call, origin) pairs), checked against each
    other (LogConflictError); the plans come in the order their run ids were first seen."""
    plans: dict[str, _Plan] = {}
    for call, origin in items:
        if not isinstance(call, CallLog):
            raise InvalidParameterError(
                f"merge_calls takes CallLog items (a log, or calls read from one), got {type(call).__name__}"
            )
        if call.status not in CALL_STATUSES:
            raise InvalidParameterError(
                f"call {str(call.header.run_id)[:12]} from {origin} has status {_show(call.status)}; "
                f"a call's status is one of {', '.join(CALL_STATUSES)}"
            )
        plan = plans.get(call.header.run_id)
        if plan is None:
            plan = plans[call.header.run_id] = _Plan(call.header, origin)
        plan.add(call, origin)
    for plan in plans.values():
        plan.check_finished()
    return plans


@dataclass
class _Write:
    """What merging one run id writes: a new call, or the records and status an existing one lacks."""

    header: CallHeader
    new: bool
    records: list
    status: Optional[str]  # the status to set, None to leave it


def _against_target(target: QueryLog, plans: dict[str, _Plan]) -> list[_Write]:
    """Check the combined calls against the target's copies (LogConflictError) and say what to write."""
    target_name = _name_of(target)
    held = {run_id for run_id in plans if target.has_call(run_id)}  # one lookup per call, not a listing
    writes: list[_Write] = []
    for run_id, plan in plans.items():
        if run_id not in held:
            records = sorted((record for record, _ in plan.records.values()), key=record_order)
            status = plan.status()
            writes.append(_Write(plan.header, True, records, None if status == "running" else status))
            continue
        existing = target.load_call(run_id)
        # the target's copy is the reference: a conflict names it second, as what is already there
        _check_header(existing.header, target_name, plan.header, plan.origin)
        existing_keys = set()
        for record in existing.records:
            key = (record.phase, record.sample_index)
            existing_keys.add(key)
            seen = plan.records.get(key)
            if seen is not None:
                _check_answer(run_id, record, target_name, seen[0], seen[1])
        combined = _Plan(existing.header, target_name)
        combined.records = dict(plan.records)
        for record in existing.records:
            combined.records.setdefault((record.phase, record.sample_index), (record, target_name))
        combined.copies = [(existing.status, frozenset(existing_keys), target_name), *plan.copies]
        combined.check_finished()
        missing = sorted((record for key, (record, _) in plan.records.items() if key not in existing_keys),
                         key=record_order)
        status = combined.status()
        writes.append(_Write(existing.header, False, missing, status if status != existing.status else None))
    return writes


def _write(target: QueryLog, writes: Sequence[_Write], sources: list, into: Optional[str]) -> MergeReport:
    added = extended = unchanged = records = 0
    # new calls in the order they began (shards interleave in time), so the merged log reads
    # in one order whatever the order of the sources
    for item in sorted(writes, key=lambda w: (False, w.header.created, w.header.run_id) if w.new else (True, 0.0, "")):
        run_id = item.header.run_id
        if item.new:
            target.begin_call(item.header)
            added += 1
        elif item.records or item.status:
            extended += 1
        else:
            unchanged += 1
        if item.records:
            target.append(run_id, item.records)
            records += len(item.records)
        if item.status:
            target.finish_call(run_id, item.status)
    return MergeReport(added, extended, unchanged, records, list(sources), into)


def merge_calls(target: QueryLog, calls: Iterable[CallLog], *, source: Optional[str] = None) -> MergeReport:
    """Copy calls into the open, writable log ``target``, adding only what it lacks.

    A call the target does not hold is copied whole (header, records, status). A call it
    holds gets the records it lacks (an older copy of a call that was still running) and its
    status moves forward (``running`` → ``complete``/``failed``), never back. Merging the
    same calls again adds nothing (idempotent). The calls may hold several copies of one
    run id (several shards, or an older and a newer copy): they are combined first.

    Every call is checked against the others and against the target before anything is
    written. Nothing experiment-wide is checked here (see :func:`merge_logs`).

    Args:
        target: a writable :class:`QueryLog` (e.g. ``open_store(path)``); it stays open.
        calls: :class:`CallLog` items: a log (iterated), or calls read from one.
        source: a name for where the calls come from, used in messages and in the report's
            ``sources``.

    Returns:
        A :class:`MergeReport`.

    Raises:
        LogConflictError: one run id with two different headers; one sample (phase, sample
            index) of one run id with two different answers (label, raw answer, error,
            reused flag, cost); a finished copy of a call lacking a record another copy has,
            or finished copies with different statuses. Nothing was written.
        InvalidParameterError: an item that is not a CallLog, or a status that is not one
            of "running", "complete", "failed".
        LogAccessError: ``target`` is read-only (e.g. from ``open_log``) or cannot be written.
    """
    if not isinstance(target, QueryLog):
        raise InvalidParameterError(f"target must be a QueryLog (e.g. open_store(path)), got {type(target).__name__}")
    origin = source or "the calls to merge"
    plans = _combine((call, origin) for call in calls)
    writes = _against_target(target, plans)
    return _write(target, writes, [source] if source else [], _name_of(target))


# -- experiments ---------------------------------------------------------------------------------


def experiment_of(header: CallHeader) -> dict:
    """The fields of a call that define its experiment, as a flat dict.

    ``kind``, ``provider``, ``model_version``, ``denoiser_id``, ``denoiser_digest``,
    ``noise_sd``, ``seed``, ``preprocessing`` (:attr:`CallHeader.preprocessing`), then every
    entry of ``header.params`` (the certification settings: ``method``, ``selection``,
    ``N0``, ``N``, ``alpha``, the sequential rule's, ...) by its own name, except the
    per-image ones (:data:`PER_IMAGE_PARAMS`: ``image_name``, ``tag``, and an imported
    call's ``file`` and ``legacy_index``). An entry named like a header field is keyed
    ``params.<name>`` (an imported call's ``params["seed"]``).

    Two calls of one experiment have equal dicts when they have the same kind and both or
    neither query clean images (σ = 0); :func:`merge_logs` compares calls only within those
    groups (a run's clean-label predict calls sit beside its certify calls), and compares
    ``provider`` and ``model_version`` across all calls.
    """
    key: dict = {name: getattr(header, name) for name in _EXPERIMENT_FIELDS[:-1]}
    key["preprocessing"] = header.preprocessing
    params = header.params if isinstance(header.params, dict) else {}
    for name in sorted(params, key=str):
        if name in PER_IMAGE_PARAMS or name == "preprocessing":
            continue
        key[f"params.{name}" if name in key else name] = params[name]
    return key


def _group_of(header: CallHeader) -> tuple:
    return (header.kind, header.noise_sd == 0)


def _check_one_experiment(items: Sequence[tuple[CallLog, str]]) -> None:
    """Refuse (MixedExperimentsError) calls of more than one experiment (see :func:`experiment_of`)."""
    first_of_run: Optional[tuple[dict, str, CallHeader]] = None
    first_of_group: dict[tuple, tuple[dict, str, CallHeader]] = {}
    for call, origin in items:
        key = experiment_of(call.header)
        if first_of_run is None:
            first_of_run = (key, origin, call.header)
        else:
            _compare_experiments(first_of_run, (key, origin, call.header), _RUN_FIELDS)
        reference = first_of_group.setdefault(_group_of(call.header), (key, origin, call.header))
        if reference[2] is not call.header:
            _compare_experiments(reference, (key, origin, call.header), None)


def _compare_experiments(first: tuple, other: tuple, names: Optional[Sequence[str]]) -> None:
    a, a_origin, a_header = first
    b, b_origin, b_header = other
    if names is None:
        names = [*a, *(name for name in b if name not in a)]
    for name in names:
        value_a, value_b = a.get(name, _ABSENT), b.get(name, _ABSENT)
        if _same(value_a, value_b):
            continue
        kind = a_header.kind if a_header.kind == b_header.kind else "predict and certify"
        raise MixedExperimentsError(
            f"{b_origin} has {_has(name, value_b)} but {a_origin} has {_has(name, value_a)} ({kind} calls "
            f"{b_header.run_id[:12]} and {a_header.run_id[:12]}): these are different experiments; merge them into "
            "separate logs, or pass allow_mixed=True (--allow-mixed)"
        )


# -- merging logs ----------------------------------------------------------------------------------


def _where(path: PathLike) -> Optional[Path]:
    """The file an SQLite log path names (a folder: its queries.sqlite3), resolved; None if unusable."""
    try:
        return resolve_log_path(path).resolve()
    except (OSError, RuntimeError, ValueError):
        return None


def _same_file(a: Optional[Path], b: Optional[Path]) -> bool:
    if a is None or b is None:
        return False
    if a == b:
        return True
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def _check_paths(sources: Sequence[Any], into: Any) -> None:
    if isinstance(into, (str, os.PathLike)):
        suffix = Path(os.fspath(into)).suffix.lower()
        if suffix in (".jsonl", ".parquet"):
            raise InvalidParameterError(
                f"into={os.fspath(into)!r}: merge into an SQLite log (.sqlite3 file or a folder), then export it "
                "with export_jsonl/export_parquet (robust-api export) if needed"
            )
        into_file = _where(into)
    elif isinstance(into, QueryLog):
        into_file = Path(into.path).resolve() if into.path is not None else None
    else:
        raise InvalidParameterError(
            f"into must be a path (.sqlite3 file or folder) or a writable QueryLog, got {type(into).__name__}"
        )
    for source in sources:
        if source is into:
            raise InvalidParameterError(f"{_name_of(source)} is both a source and the log to merge into")
        if isinstance(source, (str, os.PathLike)):
            source_file = _where(source)
        elif isinstance(source, QueryLog):
            source_file = Path(source.path).resolve() if source.path is not None else None
        else:
            raise InvalidParameterError(
                f"sources must be paths (.sqlite3 files or folders, .jsonl or .parquet exports) or QueryLogs, "
                f"got {type(source).__name__}"
            )
        if _same_file(source_file, into_file):
            raise InvalidParameterError(
                f"{os.fspath(source) if not isinstance(source, QueryLog) else _name_of(source)} is both a source "
                "and the log to merge into; merge the sources into another log"
            )


def merge_logs(sources: Sequence[Union[PathLike, QueryLog]], into: Union[PathLike, QueryLog], *,
               allow_mixed: bool = False) -> MergeReport:
    """Merge query logs (e.g. the shards of a distributed run) into one log.

    Every source is opened read-only (:func:`~robust_api.query_logs.open_log`: SQLite logs or
    folders, ``.jsonl`` and ``.parquet`` exports; a :class:`QueryLog` is read as it is and
    left open). Their calls are checked to be one experiment (unless ``allow_mixed``) and
    against each other, then against ``into``, and only then merged into it by
    :func:`merge_calls`: a missing call is added, an older copy extended, nothing is ever
    overwritten, and merging again adds nothing.

    One experiment: calls of the same kind that both or neither query clean images agree on
    every field of :func:`experiment_of` (σ, seed, denoiser, preprocessing, certification
    settings, ...), and every call has the same provider and model version. Clean-label
    predict calls (σ = 0) beside certify calls are one run, not a mix.

    Args:
        sources: paths or logs to read; at least one.
        into: the log to write: a path (an SQLite file or a folder; created when missing,
            opened with :func:`~robust_api.query_logs.open_store` and closed at the end), or a
            writable :class:`QueryLog` (left open). It may already hold calls (of any
            experiment); only the sources are checked for mixing.
        allow_mixed: merge calls of several experiments.

    Returns:
        A :class:`MergeReport` (its ``sources`` are the sources as given).

    Raises:
        MixedExperimentsError: the sources' calls are not one experiment; the message names
            the field, two values and the files they came from. Nothing was written.
        LogConflictError: see :func:`merge_calls`. Nothing was written (a missing ``into``
            is not even created when the sources conflict among themselves).
        InvalidParameterError: no source; ``into`` is one of the sources (the same file);
            ``into`` is a ``.jsonl``/``.parquet`` path (merge into SQLite, then export).
        FileNotFoundError, NotAQueryLogError, LogAccessError: a source cannot be read, or
            ``into`` cannot be written.
    """
    if isinstance(sources, (str, bytes, os.PathLike, QueryLog)) or not isinstance(sources, Sequence):
        raise InvalidParameterError("sources must be a list of paths or QueryLogs (one list, even for one source)")
    sources = list(sources)
    if not sources:
        raise InvalidParameterError("merge_logs needs at least one source log")
    _check_paths(sources, into)
    names = [_name_of(source) if isinstance(source, QueryLog) else os.fspath(source) for source in sources]
    opened: list[QueryLog] = []
    try:
        items: list[tuple[CallLog, str]] = []
        for source, name in zip(sources, names):
            if isinstance(source, QueryLog):
                log = source
            else:
                log = open_log(source)
                opened.append(log)
            items.extend((call, name) for call in log)
        if not allow_mixed:
            _check_one_experiment(items)
        plans = _combine(items)  # conflicts among the sources, before into is opened (or created)
        target = into if isinstance(into, QueryLog) else open_store(into)
        try:
            writes = _against_target(target, plans)
            return _write(target, writes, names, _name_of(target))
        finally:
            if target is not into:
                target.close()
    finally:
        for log in opened:
            log.close()
