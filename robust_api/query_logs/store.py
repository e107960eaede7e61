"""Query-log stores: SQLite (the embedded default, durable) and memory (no persistence).

SQLite layout (format_version 1)::

    meta(key PRIMARY KEY, value)          format = "robust_api.query_log", format_version = 1
    calls(call_id, run_id UNIQUE, kind, created, image_digest, image_shape, provider,
          model_version, denoiser_id, denoiser_digest, noise_sd, seed, params, status)
    queries(id, call_id, phase, sample_index, label, raw, latency_s, cost_usd, timestamp,
            error, reused, UNIQUE(call_id, phase, sample_index))

The database runs in WAL mode and each provider batch is one transaction: a crash, kill -9
or Ctrl-C loses at most the batch in flight and never corrupts what was committed. The
UNIQUE constraint makes a double-counted vote impossible at the storage level.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Optional, Union

from ..errors import InvalidParameterError, LogIntegrityError, NotAQueryLogError
from .records import FORMAT_VERSION, CallHeader, CallLog, CallSummary, PhaseVotes, QueryRecord, dumps_raw, summarize_call

__all__ = ["QueryLog", "SQLiteQueryLog", "MemoryQueryLog", "DEFAULT_LOG_DIR", "DEFAULT_LOG_FILENAME", "resolve_log_path"]

DEFAULT_LOG_DIR = "query_logs"
DEFAULT_LOG_FILENAME = "queries.sqlite3"
_SQLITE_MAGIC = b"SQLite format 3\x00"
_FORMAT_NAME = "robust_api.query_log"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS calls (
    call_id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    created REAL NOT NULL,
    image_digest TEXT NOT NULL,
    image_shape TEXT NOT NULL,
    provider TEXT NOT NULL,
    model_version TEXT,
    denoiser_id TEXT,
    denoiser_digest TEXT,
    noise_sd REAL NOT NULL,
    seed INTEGER NOT NULL,
    params TEXT NOT NULL,
    status TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS calls_by_image ON calls (image_digest, seed);
CREATE TABLE IF NOT EXISTS queries (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    call_id INTEGER NOT NULL REFERENCES calls (call_id),
    phase TEXT NOT NULL,
    sample_index INTEGER NOT NULL,
    label TEXT,
    raw TEXT,
    latency_s REAL NOT NULL,
    cost_usd REAL NOT NULL,
    timestamp REAL NOT NULL,
    error TEXT,
    reused INTEGER NOT NULL DEFAULT 0,
    UNIQUE (call_id, phase, sample_index)
);
"""


def resolve_log_path(log: Union[str, os.PathLike, None]) -> Path:
    """Where a log given as a folder or a file lives: a folder gets ``queries.sqlite3`` inside.

    ``None`` means the folder ``./query_logs/``. A path that exists as a folder, ends with a
    separator, or has no suffix is a folder; anything else is the SQLite file itself.
    """
    if log is None:
        return Path(DEFAULT_LOG_DIR) / DEFAULT_LOG_FILENAME
    text = os.fspath(log)
    path = Path(text)
    if path.is_dir() or text.endswith(("/", os.sep)) or (not path.exists() and path.suffix == ""):
        return path / DEFAULT_LOG_FILENAME
    return path


class QueryLog:
    """The interface every store implements. Calls come back in the order they began.

    Writers: :meth:`begin_call`, :meth:`append` (durable on return), :meth:`finish_call`.
    Readers: iteration (one :class:`CallLog` per call), :meth:`load_call`, :meth:`find_reusable`.
    """

    path: Optional[Path] = None

    def begin_call(self, header: CallHeader) -> None:
        raise NotImplementedError

    def append(self, run_id: str, records: Sequence[QueryRecord]) -> None:
        raise NotImplementedError

    def finish_call(self, run_id: str, status: str) -> None:
        raise NotImplementedError

    def load_call(self, run_id: str, with_raw: bool = True) -> CallLog:
        """One call and its records. ``with_raw=False`` allows a store to leave ``raw`` None
        (the SQLite store then skips reading the raw responses); re-certification never reads them."""
        raise NotImplementedError

    def run_ids(self) -> list[str]:
        raise NotImplementedError

    def find_reusable(self, header: CallHeader, phase: str, count: int) -> dict[int, QueryRecord]:
        """Successful records of earlier calls with the same noise and model, by sample index < count.

        "Same" means equal image digest, seed, noise_sd, provider, model version and denoiser
        digest: such a record answered exactly the image the new call would send.
        """
        raise NotImplementedError

    def __iter__(self) -> Iterator[CallLog]:
        for run_id in self.run_ids():
            yield self.load_call(run_id)

    def call_summaries(self) -> list[CallSummary]:
        """Every call's header, status and per-phase vote counts, in call order.

        What counts-based analysis needs, without the raw responses. The SQLite store
        computes it in SQL (a million queries in well under a second); every store gives
        the same result as :func:`summarize_call` on each of its calls.

        Raises:
            LogIntegrityError: a duplicated or missing sample index in some call.
        """
        return [summarize_call(call) for call in self]

    def __len__(self) -> int:
        return len(self.run_ids())

    def close(self) -> None:
        """Release resources; the log stays readable by others."""

    def __enter__(self) -> "QueryLog":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _same_source(a: CallHeader, b: CallHeader) -> bool:
    return (
        a.image_digest == b.image_digest
        and a.seed == b.seed
        and a.noise_sd == b.noise_sd
        and a.provider == b.provider
        and a.model_version == b.model_version
        and a.denoiser_digest == b.denoiser_digest
        and a.denoiser_id == b.denoiser_id
    )


class MemoryQueryLog(QueryLog):
    """A log kept in this process only (``RobustAPI(..., log=False)``, JSONL/Parquet imports)."""

    def __init__(self) -> None:
        self._headers: dict[str, CallHeader] = {}
        self._records: dict[str, list[QueryRecord]] = {}
        self._keys: dict[str, set[tuple[str, int]]] = {}
        self._status: dict[str, str] = {}
        self._lock = threading.RLock()  # calls of several threads (certify_many) share one log

    def begin_call(self, header: CallHeader) -> None:
        with self._lock:
            if header.run_id in self._headers:
                raise LogIntegrityError(f"run id {header.run_id} already in the log")
            self._headers[header.run_id] = header
            self._records[header.run_id] = []
            self._keys[header.run_id] = set()
            self._status[header.run_id] = "running"

    def append(self, run_id: str, records: Sequence[QueryRecord]) -> None:
        with self._lock:
            seen = self._keys[run_id]
            for record in records:
                if record.raw is not None:
                    dumps_raw(record.raw)  # same contract as the SQLite store: raw responses are plain data
            keys = [(record.phase, record.sample_index) for record in records]
            if len(set(keys)) != len(keys) or not seen.isdisjoint(keys):
                raise LogIntegrityError(f"call {run_id}: a sample index was recorded twice")
            seen.update(keys)
            self._records[run_id].extend(records)

    def finish_call(self, run_id: str, status: str) -> None:
        with self._lock:
            self._status[run_id] = status

    def load_call(self, run_id: str, with_raw: bool = True) -> CallLog:
        # the records are in memory already: keeping raw costs nothing
        with self._lock:
            return CallLog(self._headers[run_id], tuple(self._records[run_id]), self._status[run_id])

    def run_ids(self) -> list[str]:
        with self._lock:
            return list(self._headers)

    def find_reusable(self, header: CallHeader, phase: str, count: int) -> dict[int, QueryRecord]:
        with self._lock:
            found: dict[int, QueryRecord] = {}
            for run_id, other in self._headers.items():
                if run_id == header.run_id or not _same_source(header, other):
                    continue
                for record in self._records[run_id]:
                    if record.phase == phase and record.error is None and record.sample_index < count:
                        found.setdefault(record.sample_index, record)
            return found


class SQLiteQueryLog(QueryLog):
    """The durable default: one SQLite file in WAL mode (stdlib ``sqlite3``).

    Args:
        path: the database file. Created (with its folder) when missing. An existing file
            must be a robust_api query log: anything else raises :class:`NotAQueryLogError`
            and is left untouched (it is first opened read-only to check).
    """

    def __init__(self, path: Union[str, os.PathLike]):
        self.path = Path(path)
        self._lock = threading.Lock()
        self._call_ids: dict[str, int] = {}
        if self.path.exists():
            self._check_existing()
            self._conn = self._connect()
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = self._connect()
            with self._conn:
                self._conn.executescript(_SCHEMA)
                self._conn.executemany(
                    "INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)",
                    [("format", _FORMAT_NAME), ("format_version", str(FORMAT_VERSION)), ("created", repr(time.time()))],
                )

    # -- opening -------------------------------------------------------------------------
    def _check_existing(self) -> None:
        if self.path.is_dir():
            raise NotAQueryLogError(f"{self.path} is a folder; pass the log file or a folder to hold queries.sqlite3")
        with open(self.path, "rb") as handle:
            magic = handle.read(len(_SQLITE_MAGIC))
        if magic != _SQLITE_MAGIC:
            raise NotAQueryLogError(
                f"{self.path} is not a robust_api query log (not an SQLite file); the file was left untouched. "
                "Pass a new path, or a folder, to start a log there."
            )
        rows = self._probe_meta()
        if rows.get("format") != _FORMAT_NAME:
            raise NotAQueryLogError(
                f"{self.path} is an SQLite database but not a robust_api query log; the file was left untouched"
            )
        version = int(rows.get("format_version", "0"))
        if version > FORMAT_VERSION:
            raise NotAQueryLogError(
                f"{self.path} has log format_version {version}, newer than this robust_api reads ({FORMAT_VERSION}); "
                "upgrade robust_api"
            )

    def _probe_meta(self) -> dict[str, str]:
        """Read the meta table read-only, leaving no -wal/-shm file that was not there before."""
        side_files = [Path(f"{self.path}{suffix}") for suffix in ("-wal", "-shm")]
        existed = [side.exists() for side in side_files]
        # without a WAL file the database is complete in the main file: immutable creates nothing
        options = "mode=ro" if existed[0] else "mode=ro&immutable=1"
        try:
            probe = sqlite3.connect(f"file:{self.path.resolve().as_posix()}?{options}", uri=True)
            try:
                return dict(probe.execute("SELECT key, value FROM meta").fetchall())
            finally:
                probe.close()
        except sqlite3.DatabaseError:
            return {}
        finally:
            for side, was_there in zip(side_files, existed):
                if not was_there and side.exists():
                    side.unlink()

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(os.fspath(self.path), timeout=30.0, check_same_thread=False, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=ON")
        return conn

    # -- writing -------------------------------------------------------------------------
    def begin_call(self, header: CallHeader) -> None:
        with self._lock:
            conn = self._conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                cursor = conn.execute(
                    "INSERT INTO calls (run_id, kind, created, image_digest, image_shape, provider, model_version, "
                    "denoiser_id, denoiser_digest, noise_sd, seed, params, status) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'running')",
                    (
                        header.run_id,
                        header.kind,
                        header.created,
                        header.image_digest,
                        json.dumps(list(header.image_shape)),
                        header.provider,
                        header.model_version,
                        header.denoiser_id,
                        header.denoiser_digest,
                        header.noise_sd,
                        header.seed,
                        json.dumps(header.params, sort_keys=True),
                    ),
                )
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            self._call_ids[header.run_id] = cursor.lastrowid

    def _call_id(self, run_id: str) -> int:
        call_id = self._call_ids.get(run_id)
        if call_id is None:
            row = self._conn.execute("SELECT call_id FROM calls WHERE run_id = ?", (run_id,)).fetchone()
            if row is None:
                raise LogIntegrityError(f"no call with run id {run_id!r} in {self.path}")
            call_id = self._call_ids[run_id] = row[0]
        return call_id

    def append(self, run_id: str, records: Sequence[QueryRecord]) -> None:
        if not records:
            return
        with self._lock:
            call_id = self._call_id(run_id)
            rows = [
                (
                    call_id,
                    r.phase,
                    r.sample_index,
                    r.label,
                    None if r.raw is None else dumps_raw(r.raw),
                    r.latency_s,
                    r.cost_usd,
                    r.timestamp,
                    r.error,
                    int(r.reused),
                )
                for r in records
            ]
            conn = self._conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.executemany(
                    "INSERT INTO queries (call_id, phase, sample_index, label, raw, latency_s, cost_usd, timestamp, "
                    "error, reused) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    rows,
                )
                conn.execute("COMMIT")
            except sqlite3.IntegrityError as exc:
                conn.execute("ROLLBACK")
                raise LogIntegrityError(f"call {run_id}: a sample index was recorded twice ({exc})") from None
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    def finish_call(self, run_id: str, status: str) -> None:
        with self._lock:
            self._conn.execute("UPDATE calls SET status = ? WHERE run_id = ?", (status, run_id))

    # -- reading -------------------------------------------------------------------------
    _QUERY_COLUMNS = "phase, sample_index, label, raw, latency_s, cost_usd, timestamp, error, reused"

    @staticmethod
    def _record(row: tuple) -> QueryRecord:
        phase, index, label, raw, latency, cost, stamp, error, reused = row
        return QueryRecord(phase, index, label, None if raw is None else json.loads(raw), latency, cost, stamp, error, bool(reused))

    def load_call(self, run_id: str, with_raw: bool = True) -> CallLog:
        """One call and its records; ``with_raw=False`` leaves every ``raw`` None (faster: the
        raw responses are most of a log, and re-certification does not read them)."""
        with self._lock:
            row = self._conn.execute(
                "SELECT call_id, run_id, kind, created, image_digest, image_shape, provider, model_version, "
                "denoiser_id, denoiser_digest, noise_sd, seed, params, status FROM calls WHERE run_id = ?",
                (run_id,),
            ).fetchone()
            if row is None:
                raise LogIntegrityError(f"no call with run id {run_id!r} in {self.path}")
            columns = self._QUERY_COLUMNS if with_raw else self._QUERY_COLUMNS.replace("raw", "NULL")
            rows = self._conn.execute(
                f"SELECT {columns} FROM queries WHERE call_id = ? ORDER BY id", (row[0],)
            ).fetchall()
        return CallLog(self._header(row), tuple(self._record(r) for r in rows), row[13])

    @staticmethod
    def _header(row: tuple) -> CallHeader:
        """A header from a row of ``SELECT call_id, run_id, kind, ... params FROM calls``."""
        return CallHeader(
            run_id=row[1],
            kind=row[2],
            created=row[3],
            image_digest=row[4],
            image_shape=tuple(json.loads(row[5])),
            provider=row[6],
            model_version=row[7],
            denoiser_id=row[8],
            denoiser_digest=row[9],
            noise_sd=row[10],
            seed=row[11],
            params=json.loads(row[12]),
        )

    def run_ids(self) -> list[str]:
        with self._lock:
            return [r[0] for r in self._conn.execute("SELECT run_id FROM calls ORDER BY call_id")]

    def find_reusable(self, header: CallHeader, phase: str, count: int) -> dict[int, QueryRecord]:
        with self._lock:
            rows = self._conn.execute(
                f"SELECT {', '.join('q.' + c.strip() for c in self._QUERY_COLUMNS.split(','))} "
                "FROM queries q JOIN calls c ON q.call_id = c.call_id "
                "WHERE c.image_digest = ? AND c.seed = ? AND c.noise_sd = ? AND c.provider = ? "
                "AND c.model_version IS ? AND c.denoiser_digest IS ? AND c.denoiser_id IS ? AND c.run_id != ? "
                "AND q.phase = ? AND q.error IS NULL AND q.sample_index < ? ORDER BY q.id",
                (
                    header.image_digest,
                    header.seed,
                    header.noise_sd,
                    header.provider,
                    header.model_version,
                    header.denoiser_digest,
                    header.denoiser_id,
                    header.run_id,
                    phase,
                    count,
                ),
            ).fetchall()
        found: dict[int, QueryRecord] = {}
        for row in rows:
            found.setdefault(row[1], self._record(row))
        return found

    def call_summaries(self) -> list[CallSummary]:
        with self._lock:
            calls = self._conn.execute(
                "SELECT call_id, run_id, kind, created, image_digest, image_shape, provider, model_version, "
                "denoiser_id, denoiser_digest, noise_sd, seed, params, status FROM calls ORDER BY call_id"
            ).fetchall()
            # per (call, phase): how many records, which indices, what they cost (index order, no sort)
            extents = self._conn.execute(
                "SELECT call_id, phase, COUNT(*), MIN(sample_index), MAX(sample_index), COUNT(DISTINCT sample_index), "
                "SUM(1 - reused), TOTAL(cost_usd) FROM queries GROUP BY call_id, phase"
            ).fetchall()
            # per (call, phase, label) the successful answers; failed ones are votes against every class
            votes = self._conn.execute(
                "SELECT call_id, phase, label, COUNT(*) FROM queries WHERE error IS NULL AND label IS NOT NULL "
                "GROUP BY call_id, phase, label"
            ).fetchall()
        run_ids = {row[0]: row[1] for row in calls}
        counted: dict[tuple[int, str], dict[str, int]] = {}
        for call_id, phase, label, count in votes:
            counted.setdefault((call_id, phase), {})[label] = count
        phases: dict[int, dict[str, PhaseVotes]] = {}
        for call_id, phase, count, lowest, highest, distinct, paid, cost in extents:
            if lowest != 0 or highest != count - 1 or distinct != count:
                # (a file written elsewhere may lack the UNIQUE constraint: duplicates are checked too)
                problem = "duplicate" if distinct != count else "missing"
                raise LogIntegrityError(
                    f"call {run_ids.get(call_id, call_id)}: {problem} record among {phase} samples 0..{highest}; "
                    "each sample index must appear exactly once"
                )
            phase_votes = counted.get((call_id, phase), {})
            phases.setdefault(call_id, {})[phase] = PhaseVotes(
                votes=phase_votes, errors=count - sum(phase_votes.values()), samples=count, paid=int(paid),
                cost_usd=float(cost),
            )
        return [CallSummary(self._header(row), row[13], phases.get(row[0], {})) for row in calls]

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __repr__(self) -> str:
        return f"SQLiteQueryLog({os.fspath(self.path)!r})"


def open_store(log: Union[str, os.PathLike, QueryLog, None, bool]) -> QueryLog:
    """The store behind ``RobustAPI(log=...)``: None → ./query_logs/, False → memory, a path, or a store."""
    if isinstance(log, QueryLog):
        return log
    if log is False:
        return MemoryQueryLog()
    if log is True:
        log = None
    if log is not None and not isinstance(log, (str, os.PathLike)):
        raise InvalidParameterError(
            f"log must be a path, a folder, a QueryLog, None (./query_logs/) or False (memory only); got {type(log).__name__}"
        )
    return SQLiteQueryLog(resolve_log_path(log))
