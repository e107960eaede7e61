"""Export and import of query logs: JSONL (always) and Parquet (with pyarrow installed).

JSONL layout, one JSON object per line::

    {"type": "header", "format": "robust_api.query_log", "format_version": 1}
    {"type": "call", "run_id": ..., "kind": ..., ..., "status": ...}
    {"type": "query", "run_id": ..., "phase": ..., "sample_index": ..., "label": ..., "raw": ..., ...}

Parquet layout: one row per query with its call's fields repeated (a call without queries
gets one row whose ``phase`` is null); ``params`` and ``raw`` are JSON strings.

A call's records are written, and read back, in one fixed order (phase, then sample index:
:func:`~robust_api.query_logs.records.record_order`). Imports treat the file as untrusted:
only a regular file is opened (a FIFO cannot block), lines are capped at
:data:`MAX_JSONL_LINE_BYTES`, and every value is checked (type and domain) as the SQLite
store checks its rows, so a malformed export raises a typed error, never a traceback.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Union

from ..errors import LogAccessError, LogIntegrityError, MissingDependencyError, NotAQueryLogError
from .opening import FORMAT_NAME as _FORMAT_NAME
from .opening import check_regular_file
from .records import (
    FORMAT_VERSION, CallHeader, CallLog, QueryRecord, dumps_raw, header_from_values, record_from_values,
)
from .store import MemoryQueryLog, QueryLog

__all__ = ["export_jsonl", "import_jsonl", "export_parquet", "import_parquet"]

_HEADER_FIELDS = [f.name for f in dataclasses.fields(CallHeader)]
_RECORD_FIELDS = [f.name for f in dataclasses.fields(QueryRecord)]
#: The longest line a JSONL export may hold (a call, or one query with its raw answer), bytes.
MAX_JSONL_LINE_BYTES = 64 * 1024 * 1024


def _call_dict(call: CallLog) -> dict[str, Any]:
    out = {name: getattr(call.header, name) for name in _HEADER_FIELDS}
    out["image_shape"] = list(out["image_shape"])
    out["status"] = call.status
    return out


def _checked_header(where: str, data: dict[str, Any], status: Any) -> tuple[CallHeader, str]:
    """(header, status) from an export's decoded fields; KeyError when one is missing."""
    values = {name: data[name] for name in _HEADER_FIELDS}
    return header_from_values(where, status=status, **values)


def _checked_record(where: str, data: dict[str, Any]) -> QueryRecord:
    """A record from an export's decoded fields; KeyError when one is missing."""
    return record_from_values(where, **{name: data[name] for name in _RECORD_FIELDS})


def _open_export(path: Path):
    """The export at ``path`` opened for binary reading (a regular file only)."""
    if not check_regular_file(path):
        raise FileNotFoundError(f"no query log at {os.fspath(path)!r}")
    try:
        return open(path, "rb")
    except PermissionError as exc:
        raise LogAccessError(f"cannot read {path}: permission denied ({exc.strerror}); check the permissions") from None
    except OSError as exc:
        raise LogAccessError(f"cannot read {path}: {exc.strerror or exc}") from None


def _decode_json(text: Any, where: str, what: str) -> Any:
    if not isinstance(text, (str, bytes)):
        raise NotAQueryLogError(f"{where}: malformed query log: {what} is not JSON text (got {type(text).__name__})")
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:  # (UnicodeDecodeError and JSONDecodeError are ValueErrors)
        raise NotAQueryLogError(f"{where}: malformed query log: {what} is not valid JSON ({str(exc)[:100]})") from None


def _add_call(target: MemoryQueryLog, header: CallHeader, records: list[QueryRecord], status: str) -> None:
    target.begin_call(header)
    target.append(header.run_id, records)
    target.finish_call(header.run_id, status)


def export_jsonl(calls: Iterable[CallLog], path: Union[str, os.PathLike]) -> int:
    """Write calls (a log, or any iterable of CallLog) to a JSONL file; returns the number of calls."""
    count = 0
    with open(path, "w", encoding="utf-8") as out:
        out.write(json.dumps({"type": "header", "format": _FORMAT_NAME, "format_version": FORMAT_VERSION}) + "\n")
        for call in calls:
            out.write(json.dumps({"type": "call", **_call_dict(call)}, sort_keys=True) + "\n")
            for record in call.records:
                line = {name: getattr(record, name) for name in _RECORD_FIELDS}
                line["raw"] = None if record.raw is None else json.loads(dumps_raw(record.raw))
                out.write(json.dumps({"type": "query", "run_id": call.header.run_id, **line}) + "\n")
            count += 1
    return count


def import_jsonl(path: Union[str, os.PathLike]) -> MemoryQueryLog:
    """Read a JSONL export into an in-memory log (iterate it like any log).

    Each call's records come back in :func:`~robust_api.query_logs.records.record_order`.

    Raises:
        FileNotFoundError: nothing at ``path``.
        NotAQueryLogError: not a robust_api JSONL export (or a newer format), a line that is
            not JSON, longer than :data:`MAX_JSONL_LINE_BYTES`, of an unknown type, missing a
            field, or with a value of the wrong type (the message gives the line number).
        LogIntegrityError: a call listed twice, or a sample index recorded twice.
        LogAccessError: the file cannot be read.
    """
    path = Path(path)
    target = MemoryQueryLog()
    pending: dict[str, tuple[CallHeader, list[QueryRecord], str]] = {}
    with _open_export(path) as handle:
        first = _read_line(handle, path, 1)
        try:
            first = json.loads(first or b"null")
        except (ValueError, RecursionError):
            first = None
        if not isinstance(first, dict) or first.get("format") != _FORMAT_NAME:
            raise NotAQueryLogError(f"{path} is not a robust_api JSONL query log (bad first line)")
        version = first.get("format_version", 0)
        if not isinstance(version, int) or isinstance(version, bool):
            raise NotAQueryLogError(f"{path} is not a robust_api JSONL query log (format_version {version!r:.40})")
        if version > FORMAT_VERSION:
            raise NotAQueryLogError(f"{path} has format_version {version}; upgrade robust_api")
        number = 1
        while True:
            number += 1
            line = _read_line(handle, path, number)
            if line is None:
                break
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                item = json.loads(line)
                if not isinstance(item, dict):
                    raise TypeError(f"a JSON {type(item).__name__}, not an object")
                if item.get("type") == "call":
                    header, status = _checked_header(where, item, item.get("status", "complete"))
                    if header.run_id in pending:
                        raise LogIntegrityError(f"{where}: call {header.run_id} is listed twice")
                    pending[header.run_id] = (header, [], status)
                elif item.get("type") == "query":
                    run_id = item["run_id"]
                    if not isinstance(run_id, str) or run_id not in pending:
                        raise KeyError(f"run_id {str(run_id)[:40]!r} of no call line above")
                    pending[run_id][1].append(_checked_record(f"{where}: call {run_id}", item))
                else:
                    raise TypeError(f"unknown line type {str(item.get('type'))[:40]!r}")
            except (ValueError, RecursionError, KeyError, TypeError) as exc:
                if isinstance(exc, (NotAQueryLogError, LogIntegrityError)):
                    raise
                raise NotAQueryLogError(
                    f"{where}: malformed query-log line ({type(exc).__name__}: {str(exc)[:200]})"
                ) from None
    for header, records, status in pending.values():
        _add_call(target, header, records, status)
    return target


def _read_line(handle, path: Path, number: int) -> "bytes | None":
    """One line (bytes, newline kept), None at the end; a line over the cap is refused."""
    line = handle.readline(MAX_JSONL_LINE_BYTES + 1)
    if not line:
        return None
    if len(line) > MAX_JSONL_LINE_BYTES:
        raise NotAQueryLogError(
            f"{path}:{number}: a line longer than {MAX_JSONL_LINE_BYTES:,} bytes; not a robust_api JSONL query log"
        )
    return line


def _pyarrow():
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError:
        raise MissingDependencyError(
            "Parquet export/import needs pyarrow: pip install 'robust-api[parquet]' (or pip install pyarrow)"
        ) from None
    return pyarrow


def export_parquet(calls: Iterable[CallLog], path: Union[str, os.PathLike]) -> int:
    """Write calls to one Parquet file (needs pyarrow); returns the number of calls."""
    pa = _pyarrow()
    rows: list[dict[str, Any]] = []
    count = 0
    for call in calls:
        base = _call_dict(call)
        base["image_shape"] = json.dumps(base["image_shape"])
        base["params"] = json.dumps(base["params"], sort_keys=True)
        base["seed"] = str(base["seed"])
        if not call.records:
            rows.append({**base, **{name: None for name in _RECORD_FIELDS}})
        for record in call.records:
            values = {name: getattr(record, name) for name in _RECORD_FIELDS}
            values["raw"] = None if record.raw is None else dumps_raw(record.raw)
            rows.append({**base, **values})
        count += 1
    table = pa.Table.from_pylist(rows)
    table = table.replace_schema_metadata({"format": _FORMAT_NAME, "format_version": str(FORMAT_VERSION)})
    pa.parquet.write_table(table, os.fspath(path))
    return count


def import_parquet(path: Union[str, os.PathLike]) -> MemoryQueryLog:
    """Read a Parquet export into an in-memory log (needs pyarrow).

    Raises:
        FileNotFoundError: nothing at ``path``.
        NotAQueryLogError: not a readable Parquet file, not a robust_api export (or a newer
            format), a missing column, or a value of the wrong type (the message names the row).
        LogIntegrityError: the rows of one call disagree about its header, or a sample index
            is recorded twice.
        LogAccessError: the file cannot be read.
        MissingDependencyError: pyarrow is not installed.
    """
    pa = _pyarrow()
    path = Path(path)
    _open_export(path).close()  # a regular file we may read (a FIFO is refused before it is opened)
    try:
        table = pa.parquet.read_table(os.fspath(path))
    except PermissionError as exc:
        raise LogAccessError(f"cannot read {path}: permission denied ({exc.strerror})") from None
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise NotAQueryLogError(f"{path} is not a readable Parquet file ({str(exc)[:200]})") from None
    meta = {k.decode(errors="replace"): v.decode(errors="replace") for k, v in (table.schema.metadata or {}).items()}
    if meta.get("format") != _FORMAT_NAME:
        raise NotAQueryLogError(f"{path} is not a robust_api Parquet query log")
    try:
        version = int(meta.get("format_version", "0"))
    except ValueError:
        raise NotAQueryLogError(f"{path} has an unreadable format_version {meta.get('format_version')!r:.40}") from None
    if version > FORMAT_VERSION:
        raise NotAQueryLogError(f"{path} has format_version {meta['format_version']}; upgrade robust_api")
    missing = [name for name in (*_HEADER_FIELDS, "status", *_RECORD_FIELDS) if name not in table.column_names]
    if missing:
        raise NotAQueryLogError(f"{path} is not a robust_api Parquet query log: no column {', '.join(missing)}")
    pending: dict[str, tuple[CallHeader, list[QueryRecord], str]] = {}
    for number, row in enumerate(table.to_pylist()):
        where = f"{path}: row {number}"
        run_id = row["run_id"]
        seed = row["seed"]
        if not isinstance(seed, str) or not seed.isdigit() or len(seed) > 19:
            raise NotAQueryLogError(f"{where}: malformed query log: seed must be a decimal string (got {seed!r:.40})")
        header_values = dict(row, seed=int(seed), image_shape=_decode_json(row["image_shape"], where, "image_shape"),
                             params=_decode_json(row["params"], where, "params"))
        header, status = _checked_header(where, header_values, row["status"])
        if run_id not in pending:
            pending[run_id] = (header, [], status)
        elif pending[run_id][0] != header or pending[run_id][2] != status:
            raise LogIntegrityError(f"{where}: the rows of call {str(run_id)[:40]} disagree about its header or status")
        if row["phase"] is not None:
            values = dict(row, raw=None if row["raw"] is None else _decode_json(row["raw"], where, "raw"))
            pending[run_id][1].append(_checked_record(f"{where}: call {run_id}", values))
    target = MemoryQueryLog()
    for header, records, status in pending.values():
        _add_call(target, header, records, status)
    return target


def open_log(path: Union[str, os.PathLike]) -> QueryLog:
    """Open a query log written earlier, by this or another process.

    Args:
        path: an SQLite log file (or the folder holding ``queries.sqlite3``), a ``.jsonl``
            export, or a ``.parquet`` export (needs pyarrow).

    Returns:
        A :class:`QueryLog`; iterating it yields one :class:`CallLog` per predict/certify
        call, in call order, each usable as the first argument of the offline
        ``RobustAPI.predict`` / ``RobustAPI.certify``.

    An SQLite log is opened read-only: the reader cannot write, checkpoint or delete
    anything, so reading a log that another process is writing never loses its commits
    (SQLite may add its empty ``-wal``/``-shm`` side files; they are never deleted). The file
    is checked before any row is read (a regular file, exactly the store's schema, no
    trigger or view, a format version this release reads), and every value read is checked.

    Raises:
        FileNotFoundError: nothing at that path.
        NotAQueryLogError: the file is not a robust_api log, is damaged or malformed (it is
            left untouched); :class:`UntrustedLogError` when an SQLite log's schema was changed
            (a trigger, a view, another table or column).
        LogIntegrityError: records that contradict each other (a duplicated sample index).
        LogAccessError: the file cannot be read (permissions, a lock held too long).
    """
    from .store import SQLiteQueryLog, resolve_log_path

    text = os.fspath(path)
    target = Path(text)
    if target.is_dir():
        target = resolve_log_path(target)
    if not check_regular_file(target):
        raise FileNotFoundError(f"no query log at {text!r}")
    suffix = target.suffix.lower()
    if suffix == ".jsonl":
        return import_jsonl(target)
    if suffix == ".parquet":
        return import_parquet(target)
    return SQLiteQueryLog(target, read_only=True)
