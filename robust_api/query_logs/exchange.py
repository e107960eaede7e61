"""Export and import of query logs: JSONL (always) and Parquet (with pyarrow installed).

JSONL layout, one JSON object per line::

    {"type": "header", "format": "robust_api.query_log", "format_version": 1}
    {"type": "call", "run_id": ..., "kind": ..., ..., "status": ...}
    {"type": "query", "run_id": ..., "phase": ..., "sample_index": ..., "label": ..., "raw": ..., ...}

Parquet layout: one row per query with its call's fields repeated (a call without queries
gets one row whose ``phase`` is null); ``params`` and ``raw`` are JSON strings.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Union

from ..errors import MissingDependencyError, NotAQueryLogError
from .records import FORMAT_VERSION, CallHeader, CallLog, QueryRecord, dumps_raw
from .store import MemoryQueryLog, QueryLog

__all__ = ["export_jsonl", "import_jsonl", "export_parquet", "import_parquet"]

_FORMAT_NAME = "robust_api.query_log"
_HEADER_FIELDS = [f.name for f in dataclasses.fields(CallHeader)]
_RECORD_FIELDS = [f.name for f in dataclasses.fields(QueryRecord)]


def _call_dict(call: CallLog) -> dict[str, Any]:
    out = {name: getattr(call.header, name) for name in _HEADER_FIELDS}
    out["image_shape"] = list(out["image_shape"])
    out["status"] = call.status
    return out


def _header_from(data: dict[str, Any]) -> CallHeader:
    values = {name: data[name] for name in _HEADER_FIELDS}
    values["image_shape"] = tuple(values["image_shape"])
    return CallHeader(**values)


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

    Raises:
        NotAQueryLogError: the file is not a robust_api JSONL export (or a newer format).
    """
    path = Path(path)
    target = MemoryQueryLog()
    pending: dict[str, tuple[CallHeader, list[QueryRecord], str]] = {}
    order: list[str] = []
    with open(path, encoding="utf-8") as handle:
        try:
            first = json.loads(handle.readline() or "null")
        except json.JSONDecodeError:
            first = None
        if not isinstance(first, dict) or first.get("format") != _FORMAT_NAME:
            raise NotAQueryLogError(f"{path} is not a robust_api JSONL query log (bad first line)")
        if int(first.get("format_version", 0)) > FORMAT_VERSION:
            raise NotAQueryLogError(f"{path} has format_version {first['format_version']}; upgrade robust_api")
        for number, line in enumerate(handle, start=2):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
                if item["type"] == "call":
                    pending[item["run_id"]] = (_header_from(item), [], item.get("status", "complete"))
                    order.append(item["run_id"])
                elif item["type"] == "query":
                    values = {name: item[name] for name in _RECORD_FIELDS}
                    pending[item["run_id"]][1].append(QueryRecord(**values))
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise NotAQueryLogError(f"{path}:{number}: malformed query-log line ({type(exc).__name__}: {exc})") from None
    for run_id in order:
        _add_call(target, *pending[run_id])
    return target


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
    """Read a Parquet export into an in-memory log (needs pyarrow)."""
    pa = _pyarrow()
    try:
        table = pa.parquet.read_table(os.fspath(path))
    except (pa.ArrowInvalid, OSError) as exc:
        raise NotAQueryLogError(f"{path} is not a readable Parquet file ({exc})") from None
    meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
    if meta.get("format") != _FORMAT_NAME:
        raise NotAQueryLogError(f"{path} is not a robust_api Parquet query log")
    if int(meta.get("format_version", "0")) > FORMAT_VERSION:
        raise NotAQueryLogError(f"{path} has format_version {meta['format_version']}; upgrade robust_api")
    pending: dict[str, tuple[CallHeader, list[QueryRecord], str]] = {}
    for row in table.to_pylist():
        if row["run_id"] not in pending:
            header_values = dict(row)
            header_values["image_shape"] = json.loads(row["image_shape"])
            header_values["params"] = json.loads(row["params"])
            header_values["seed"] = int(row["seed"])
            pending[row["run_id"]] = (_header_from(header_values), [], row["status"])
        if row["phase"] is not None:
            values = {name: row[name] for name in _RECORD_FIELDS}
            values["raw"] = None if row["raw"] is None else json.loads(row["raw"])
            pending[row["run_id"]][1].append(QueryRecord(**values))
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

    Raises:
        FileNotFoundError: nothing at that path.
        NotAQueryLogError: the file is not a robust_api log (it is left untouched).
    """
    from .store import SQLiteQueryLog, resolve_log_path

    text = os.fspath(path)
    target = Path(text)
    if target.is_dir():
        target = resolve_log_path(target)
    if not target.exists():
        raise FileNotFoundError(f"no query log at {text!r}")
    suffix = target.suffix.lower()
    if suffix == ".jsonl":
        return import_jsonl(target)
    if suffix == ".parquet":
        return import_parquet(target)
    return SQLiteQueryLog(target)
