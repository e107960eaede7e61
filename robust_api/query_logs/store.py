"""Query-log stores: SQLite (the embedded default, durable) and memory (no persistence).

SQLite layout (format_version 1)::

    meta(key PRIMARY KEY, value)          format = "robust_api.query_log", format_version = 1
    calls(call_id, run_id UNIQUE, kind, created, image_digest, image_shape, provider,
          model_version, denoiser_id, denoiser_digest, noise_sd, seed, params, status)
    queries(id, call_id, phase, sample_index, label, raw, latency_s, cost_usd, timestamp,
            error, reused, UNIQUE(call_id, phase, sample_index))

The database runs in WAL mode with ``synchronous=FULL`` and each provider batch is one
transaction: a crash, kill -9, Ctrl-C or power loss loses at most the batch in flight and
never corrupts what was committed. The UNIQUE constraint makes a double-counted vote
impossible at the storage level. A call's records are read back in one fixed order (phase,
then sample index: :func:`~robust_api.query_logs.records.record_order`), whatever order
concurrent batches were committed in.

Opening a file (see :mod:`robust_api.query_logs.opening` for the rules): a new log is created
atomically; an existing file is checked read-only (a regular file, the SQLite magic, exactly
the store's schema with no trigger or view, a format version this release reads) before
anything reads or writes it; readers (``open_log``, analysis) open it read-only; no store
ever deletes a ``-wal``/``-shm`` side file. Values read back are checked too (types and
domains): a malformed row raises a typed error, never an unrelated traceback.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Optional, Union

from ..errors import InvalidParameterError, LogAccessError, LogIntegrityError, NotAQueryLogError
from ..noise import PHASES
from .opening import connect_log, translate_sqlite_error
from .records import (
    MAX_LOGGED_COST_USD, CallHeader, CallLog, CallSummary, PhaseVotes, QueryRecord, dumps_raw,
    header_from_values, preprocessing_of, record_from_values, record_order, summarize_call,
)

__all__ = [
    "QueryLog", "SQLiteQueryLog", "MemoryQueryLog", "DEFAULT_LOG_DIR", "DEFAULT_LOG_FILENAME", "resolve_log_path",
    "default_log_path",
]

#: The folder of the default log, under the data directory (:func:`robust_api.paths.data_dir`).
DEFAULT_LOG_DIR = "query_logs"
DEFAULT_LOG_FILENAME = "queries.sqlite3"


def default_log_path() -> Path:
    """The default query log: ``<data directory>/query_logs/queries.sqlite3``, where the data
    directory is ``$ROBUST_API_HOME`` or the user's data folder (see :func:`robust_api.paths.data_dir`)."""
    from ..paths import data_dir

    return data_dir() / DEFAULT_LOG_DIR / DEFAULT_LOG_FILENAME


def resolve_log_path(log: Union[str, os.PathLike, None]) -> Path:
    """Where a log given as a folder or a file lives: a folder gets ``queries.sqlite3`` inside.

    ``None`` means :func:`default_log_path` (in the user's data directory). A path that exists
    as a folder, ends with a separator, or has no suffix is a folder; anything else is the
    SQLite file itself.
    """
    if log is None:
        return default_log_path()
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
        """One call and its records, in :func:`~robust_api.query_logs.records.record_order`
        (phase, then sample index: never the order in which concurrent batches were committed).
        ``with_raw=False`` allows a store to leave ``raw`` None (the SQLite store then skips
        reading the raw responses); re-certification never reads them."""
        raise NotImplementedError

    def run_ids(self) -> list[str]:
        raise NotImplementedError

    def has_call(self, run_id: str) -> bool:
        """Whether the log holds a call with this run id (without listing every call)."""
        return run_id in self.run_ids()

    def find_reusable(self, header: CallHeader, phase: str, count: int) -> dict[int, QueryRecord]:
        """Successful records of earlier calls with the same noise and model, by sample index < count.

        "Same" means equal image digest, seed, noise_sd, provider, model version, denoiser
        identity and digest, and preprocessing (:attr:`CallHeader.preprocessing`: whether the
        denoiser got the noisy copies clipped or not): such a record answered exactly the
        image the new call would send.
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

        A gap (an index missing below the highest one, as an interrupted call may leave) is
        counted in :attr:`PhaseVotes.missing`, not refused.

        Raises:
            LogIntegrityError: a duplicated (or negative, or non-integer) sample index in some call.
        """
        return [summarize_call(call) for call in self]

    def __len__(self) -> int:
        return len(self.run_ids())

    def source_lock(self, header: CallHeader, phase: str):
        """A context manager held while a call sends the missing samples of ``phase`` for the
        source of ``header`` (what :meth:`find_reusable` matches), so one caller pays for them.

        A concurrent call on the same source waits, then finds the answers in the log. This
        default serializes the threads of this process (a store living in one process); the
        SQLite store also serializes processes (see :mod:`robust_api.query_logs.locks`).
        """
        from .locks import in_process_source_lock

        return in_process_source_lock(self, header, phase)

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
        and a.preprocessing == b.preprocessing
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
            records = tuple(sorted(self._records[run_id], key=record_order))  # not the order batches arrived in
            return CallLog(self._headers[run_id], records, self._status[run_id])

    def run_ids(self) -> list[str]:
        with self._lock:
            return list(self._headers)

    def has_call(self, run_id: str) -> bool:
        with self._lock:
            return run_id in self._headers

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
        path: the database file. Created (with its folder) when missing, atomically: a
            concurrent creator or reader sees no file or a complete log. An existing file
            must be a robust_api query log with exactly the store's schema: anything else
            raises :class:`NotAQueryLogError` (:class:`UntrustedLogError` for an edited
            schema: a trigger, a view, another table or column) and is left untouched; the
            check runs read-only before anything is read or written.
        read_only: open for reading only (``open_log`` and the analysis do): the connection
            cannot write, checkpoint or delete anything, so it cannot lose a writer's
            commits; :meth:`begin_call`, :meth:`append` and :meth:`finish_call` raise
            :class:`LogAccessError`. A missing file raises ``FileNotFoundError``.

    Raises:
        NotAQueryLogError, UntrustedLogError: see above.
        LogAccessError: permission denied, a folder that cannot be written, a lock held by
            another process for more than 30 s.
    """

    def __init__(self, path: Union[str, os.PathLike], read_only: bool = False):
        self.path = Path(path)
        self.read_only = bool(read_only)
        self._lock = threading.Lock()
        self._call_ids: dict[str, int] = {}
        self._conn = connect_log(self.path, read_only=self.read_only)

    @contextlib.contextmanager
    def _sqlite_errors(self, doing: str) -> Iterator[None]:
        """Turn an ``sqlite3`` error met while ``doing`` something into the typed error for it."""
        try:
            yield
        except sqlite3.Error as exc:
            raise translate_sqlite_error(self.path, exc, doing) from None

    def _writable(self) -> None:
        if self.read_only:
            raise LogAccessError(
                f"{self.path} was opened read-only (robust_api.open_log); write through RobustAPI(log=path) "
                "or SQLiteQueryLog(path)"
            )

    # -- writing -------------------------------------------------------------------------
    def begin_call(self, header: CallHeader) -> None:
        self._writable()
        with self._lock, self._sqlite_errors("write a new call to"):
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
            except sqlite3.IntegrityError:
                conn.execute("ROLLBACK")
                raise LogIntegrityError(f"run id {header.run_id} already in the log {self.path}") from None
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
        self._writable()
        if not records:
            return
        with self._lock, self._sqlite_errors("write records to"):
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
        self._writable()
        with self._lock, self._sqlite_errors("write the status of a call to"):
            self._conn.execute("UPDATE calls SET status = ? WHERE run_id = ?", (status, run_id))

    # -- reading -------------------------------------------------------------------------
    _QUERY_COLUMNS = "phase, sample_index, label, raw, latency_s, cost_usd, timestamp, error, reused"
    #: SQL: 1 for a row whose values would change the counts if taken as they are: an unknown
    #: phase (a blob never equals a phase name), a label or error that is not text, a reused
    #: flag other than 0/1 (bound: the 4 phases). load_call checks every field of a record;
    #: a call_id that is not a call's is an orphan (checked after the scan).
    _MALFORMED_ROW = (
        "(phase NOT IN (?, ?, ?, ?) OR (label IS NOT NULL AND typeof(label) != 'text') "
        "OR (error IS NOT NULL AND typeof(error) != 'text') OR reused NOT IN (0, 1))"
    )

    def _json(self, text, what: str, where: str, optional: bool = False):
        """Decode a JSON column; a value that is not JSON text is a typed error."""
        if text is None and optional:
            return None
        if not isinstance(text, str):
            raise NotAQueryLogError(f"{where}: malformed query log: {what} is not JSON text (got {type(text).__name__})")
        try:
            return json.loads(text)
        except (ValueError, RecursionError) as exc:
            raise NotAQueryLogError(
                f"{where}: malformed query log: {what} is not valid JSON ({str(exc)[:100]}); the file was left untouched"
            ) from None

    def _record(self, row: tuple, where: str) -> QueryRecord:
        """A checked record from a row of ``SELECT {_QUERY_COLUMNS}``."""
        phase, index, label, raw, latency, cost, stamp, error, reused = row
        raw = self._json(raw, f"the raw answer of {phase} sample {index}", where, optional=True)
        return record_from_values(where, phase, index, label, raw, latency, cost, stamp, error, reused)

    def load_call(self, run_id: str, with_raw: bool = True) -> CallLog:
        """One call and its records, in :func:`record_order` (phase, then sample index).

        ``with_raw=False`` leaves every ``raw`` None (faster: the raw responses are most of a
        log, and re-certification does not read them).

        Raises:
            LogIntegrityError: no such call, or a record that is not the call's own.
            NotAQueryLogError: a malformed value (wrong type, bad JSON); the message names it.
        """
        with self._lock, self._sqlite_errors("read a call from"):
            row = self._conn.execute(
                "SELECT call_id, run_id, kind, created, image_digest, image_shape, provider, model_version, "
                "denoiser_id, denoiser_digest, noise_sd, seed, params, status FROM calls WHERE run_id = ?",
                (run_id,),
            ).fetchone()
            if row is None:
                raise LogIntegrityError(f"no call with run id {run_id!r} in {self.path}")
            columns = self._QUERY_COLUMNS if with_raw else self._QUERY_COLUMNS.replace("raw", "NULL")
            # the index finds the rows' ids; the rows themselves (call_id included) are then read
            # from the table, so an index that disagrees with its table cannot lend another
            # call's records to this one
            rows = self._conn.execute(
                f"SELECT call_id, {columns} FROM queries WHERE id IN (SELECT id FROM queries WHERE call_id = ?)",
                (row[0],),
            ).fetchall()
        header = self._header(row)
        where = f"{self.path}: call {header.run_id}"
        if any(r[0] != row[0] for r in rows):
            raise LogIntegrityError(f"{where}: the table and its index disagree about the call's records (damaged file)")
        records = sorted((self._record(r[1:], where) for r in rows), key=record_order)
        return CallLog(header, tuple(records), row[13])

    def _header(self, row: tuple) -> CallHeader:
        """A checked header from a row of ``SELECT call_id, run_id, kind, ... params, status FROM calls``."""
        where = f"{self.path}: call {str(row[1])[:40]}"
        image_shape = self._json(row[5], "image_shape", where)
        params = self._json(row[12], "params", where)
        header, _ = header_from_values(
            os.fspath(self.path), row[1], row[2], row[3], row[4], image_shape, row[6], row[7], row[8], row[9],
            row[10], row[11], params, row[13],
        )
        return header

    def run_ids(self) -> list[str]:
        with self._lock, self._sqlite_errors("list the calls of"):
            return [r[0] for r in self._conn.execute("SELECT run_id FROM calls ORDER BY call_id")]

    def has_call(self, run_id: str) -> bool:
        with self._lock, self._sqlite_errors("look for a call in"):
            return self._conn.execute("SELECT 1 FROM calls WHERE run_id = ?", (run_id,)).fetchone() is not None

    def find_reusable(self, header: CallHeader, phase: str, count: int) -> dict[int, QueryRecord]:
        with self._lock, self._sqlite_errors("look for reusable answers in"):
            rows = self._conn.execute(
                f"SELECT {', '.join('q.' + c.strip() for c in self._QUERY_COLUMNS.split(','))}, c.params "
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
        where = f"{self.path}: a call reusable for {header.run_id}"
        wanted = header.preprocessing
        same_preprocessing: dict = {}  # params text -> whether its preprocessing is the header's
        for row in rows:
            params = row[-1]
            if params not in same_preprocessing:
                same_preprocessing[params] = preprocessing_of(self._json(params, "params", where)) == wanted
            if same_preprocessing[params]:
                found.setdefault(row[1], self._record(row[:-1], where))
        return found

    def call_summaries(self) -> list[CallSummary]:
        with self._lock, self._sqlite_errors("summarize the calls of"):
            # one read transaction: the three queries see one snapshot even while a writer commits
            self._conn.execute("BEGIN")
            try:
                calls = self._conn.execute(
                    "SELECT call_id, run_id, kind, created, image_digest, image_shape, provider, model_version, "
                    "denoiser_id, denoiser_digest, noise_sd, seed, params, status FROM calls ORDER BY call_id"
                ).fetchall()
                # per (call, phase): how many records, which indices, what they cost
                # (and how many costs are not a valid price, how many indices are not integers, and
                # how many rows hold a value of the wrong type: see _MALFORMED_ROW)
                # NOT INDEXED: counted from the table's rows themselves, never from an index that a
                # damaged or forged file could make disagree with them (and no slower: one scan)
                extents = self._conn.execute(
                    "SELECT call_id, phase, COUNT(*), MIN(sample_index), MAX(sample_index), "
                    "COUNT(DISTINCT sample_index), SUM(CASE WHEN reused THEN 0 ELSE 1 END), TOTAL(cost_usd), "
                    "SUM(CASE WHEN typeof(cost_usd) IN ('integer', 'real') AND cost_usd >= 0 AND cost_usd <= ? "
                    "THEN 0 ELSE 1 END), SUM(typeof(sample_index) != 'integer'), "
                    f"SUM({self._MALFORMED_ROW}) FROM queries NOT INDEXED GROUP BY call_id, phase",
                    (MAX_LOGGED_COST_USD, *PHASES),
                ).fetchall()
                # per (call, phase, label) the successful answers; failed ones are votes against every class
                votes = self._conn.execute(
                    "SELECT call_id, phase, label, COUNT(*) FROM queries NOT INDEXED "
                    "WHERE error IS NULL AND label IS NOT NULL GROUP BY call_id, phase, label"
                ).fetchall()
            finally:
                self._conn.execute("ROLLBACK")
        run_ids = {row[0]: row[1] for row in calls}
        counted: dict[tuple[int, str], dict[str, int]] = {}
        for call_id, phase, label, count in votes:
            counted.setdefault((call_id, phase), {})[label] = count
        phases: dict[int, dict[str, PhaseVotes]] = {}
        for call_id, phase, count, lowest, highest, distinct, paid, cost, invalid_costs, odd, malformed in extents:
            if malformed:  # what load_call would refuse too (record_from_values)
                raise NotAQueryLogError(
                    f"{self.path}: call {run_ids.get(call_id, call_id)}: malformed query log: {malformed} record(s) "
                    f"of phase {str(phase)[:40]!r} hold a value of the wrong type (an unknown phase, a label or error "
                    "that is not text, a reused flag other than 0/1); the file was left untouched"
                )
            if odd or lowest < 0 or distinct != count:
                # never in an honest log (a file written elsewhere may lack the UNIQUE constraint);
                # a gap is honest (an interrupted call) and is counted in ``missing`` instead
                problem = "duplicate record" if distinct != count else "sample index that is not an integer >= 0"
                raise LogIntegrityError(
                    f"call {run_ids.get(call_id, call_id)}: {problem} among its {phase} samples; "
                    "each sample index must appear at most once"
                )
            phase_votes = counted.get((call_id, phase), {})
            phases.setdefault(call_id, {})[phase] = PhaseVotes(
                votes=phase_votes, errors=count - sum(phase_votes.values()), samples=count, paid=int(paid),
                cost_usd=None if invalid_costs else float(cost), missing=highest + 1 - count,
                invalid_costs=int(invalid_costs),
            )
        orphans = set(phases) - set(run_ids)
        if orphans:
            raise LogIntegrityError(
                f"{self.path}: records of call_id {min(orphans)!r} belong to no call in the calls table (damaged file)"
            )
        return [CallSummary(self._header(row), row[13], phases.get(row[0], {})) for row in calls]

    def source_lock(self, header: CallHeader, phase: str):
        """Like :meth:`QueryLog.source_lock`, and across processes: a byte-range lock on the
        side file ``<log>.lock`` (created on first use, never deleted; see
        :mod:`robust_api.query_logs.locks`)."""
        from .locks import file_source_lock

        return file_source_lock(self.path, header, phase)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __repr__(self) -> str:
        return f"SQLiteQueryLog({os.fspath(self.path)!r})"


def open_store(log: Union[str, os.PathLike, QueryLog, None, bool]) -> QueryLog:
    """The store behind ``RobustAPI(log=...)``: None → :func:`default_log_path` (the user's data
    directory), False → memory, a path, or a store."""
    if isinstance(log, QueryLog):
        return log
    if log is False:
        return MemoryQueryLog()
    if log is True:
        log = None
    if log is not None and not isinstance(log, (str, os.PathLike)):
        raise InvalidParameterError(
            f"log must be a path, a folder, a QueryLog, None (the default log in the user's data directory) or "
            f"False (memory only); got {type(log).__name__}"
        )
    return SQLiteQueryLog(resolve_log_path(log))
