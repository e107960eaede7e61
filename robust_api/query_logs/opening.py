"""Opening an SQLite query log: creating it atomically, checking an existing file before
anything reads or writes it, and the connection settings that keep commits durable.

The rules (docs/log-format.md, "Opening a log", says the same for users):

- **Side files are SQLite's.** The store never deletes a ``-wal`` or ``-shm`` file, nor any
  file it did not create in this process. Readers open the log read-only (``mode=ro``): such
  a connection cannot checkpoint, truncate or delete the write-ahead log, so it cannot lose a
  writer's commits. It may create an empty ``-wal``/``-shm`` pair next to a WAL database when
  they are missing (SQLite needs the shared-memory index to read alongside writers); they are
  left in place, and SQLite removes them when the last read-write connection closes.
  Data is never read with ``immutable=1`` (it tells SQLite that nobody writes the file, which
  a reader cannot know). One narrow use remains: when no ``-wal`` file exists (so no process
  has the database open in WAL mode), the schema is first read with ``immutable=1``, which
  creates, locks and writes nothing, and a file that is not a query log is refused there,
  leaving no side file next to someone else's database. That probe can only refuse; a file
  it passes is checked again, and read, through ``mode=ro``. On a file system mounted
  read-only nobody can write the log (a writer must create its ``-wal`` there), so a reader
  uses ``immutable=1`` there, as SQLite intends for read-only media (``mode=ro`` could not
  open a WAL log there without its side files).
- **Creation is atomic.** A new log is built complete (schema and meta, WAL mode) in a
  private temporary file next to it, then hard-linked to its name, which fails if the name
  exists. A reader or a concurrent creator sees either no file or a complete log; the
  creator that loses the race opens the winner's log. Where the file system has no hard
  links, the new log's bytes are copied into a file created with ``O_EXCL`` instead
  (a concurrent opener may then see an unfinished file and fail with a typed error; retry).
- **Checked before use.** A path must be a regular file (a FIFO, socket, device or folder is
  refused before it is opened, so nothing blocks), start with the SQLite magic, and have
  exactly the schema the store creates: the same tables, columns, types, constraints and
  indexes, and no trigger or view (compared entry by entry with ``sqlite_master``). Then
  ``meta`` must name the format and a version this release reads. A writer runs the same
  check, read-only, before it touches the file. Every connection sets
  ``trusted_schema=OFF`` and never enables extensions, so no content of the file chooses
  code to run.
- **Durable commits.** Writers use WAL with ``synchronous=FULL`` (and ``fullfsync`` where the
  platform has it): a transaction that returned is on disk and survives power loss, not
  only a crash of the process (benchmarks/log_durability.py measures the cost).
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import secrets
import shutil
import sqlite3
import stat
import time
from pathlib import Path
from typing import Optional

from ..errors import LogAccessError, NotAQueryLogError, QueryLogError, UntrustedLogError
from .records import FORMAT_VERSION

__all__ = [
    "FORMAT_NAME", "SCHEMA", "SCHEMA_STATEMENTS", "BUSY_TIMEOUT_S", "check_regular_file", "connect_log",
    "translate_sqlite_error",
]

logger = logging.getLogger(__name__)

FORMAT_NAME = "robust_api.query_log"
SQLITE_MAGIC = b"SQLite format 3\x00"
#: How long a connection waits for another process's lock before a typed error (seconds).
BUSY_TIMEOUT_S = 30.0

SCHEMA = """
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
SCHEMA_STATEMENTS = tuple(statement.strip() for statement in SCHEMA.split(";") if statement.strip())

_LEFT_UNTOUCHED = "the file was left untouched"


# -- what is at the path ---------------------------------------------------------------------


def check_regular_file(path: Path) -> bool:
    """Whether ``path`` exists, refusing anything that is not a regular file before opening it.

    Returns:
        False when nothing is at ``path``; True for a regular file (symbolic links followed).

    Raises:
        NotAQueryLogError: a folder, FIFO, socket or device, a broken symbolic link or a
            symbolic-link loop (nothing is opened, so a FIFO cannot block).
        LogAccessError: the path cannot be examined (permission denied, ...).
    """
    try:
        mode = os.lstat(path).st_mode
        if stat.S_ISLNK(mode):
            try:
                mode = os.stat(path).st_mode
            except FileNotFoundError:
                raise NotAQueryLogError(f"{path} is a broken symbolic link, not a robust_api query log") from None
    except FileNotFoundError:
        return False
    except PermissionError as exc:
        raise LogAccessError(f"cannot examine {path}: permission denied ({exc.strerror}); check the permissions") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise NotAQueryLogError(f"{path} is a symbolic link loop, not a robust_api query log") from None
        if exc.errno == errno.ENOTDIR:
            raise NotAQueryLogError(f"{path}: a folder on the way is a file, so this is not a query log") from None
        raise LogAccessError(f"cannot examine {path}: {exc.strerror or exc}") from None
    if stat.S_ISDIR(mode):
        raise NotAQueryLogError(f"{path} is a folder; pass the log file or a folder to hold queries.sqlite3")
    if not stat.S_ISREG(mode):
        raise NotAQueryLogError(
            f"{path} is not a regular file (a FIFO, socket or device), so not a robust_api query log; it was not opened"
        )
    return True


def _read_magic(path: Path) -> bytes:
    """The first bytes of a regular file, opened without blocking and checked again once open."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except PermissionError as exc:
        raise LogAccessError(f"cannot read {path}: permission denied ({exc.strerror}); check the permissions") from None
    except OSError as exc:
        raise LogAccessError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):  # replaced since it was examined
            raise NotAQueryLogError(f"{path} is not a regular file, so not a robust_api query log; it was not read")
        return os.read(fd, len(SQLITE_MAGIC))
    except OSError as exc:
        raise LogAccessError(f"cannot read {path}: {exc.strerror or exc}") from None
    finally:
        os.close(fd)


def _check_magic(path: Path) -> None:
    magic = _read_magic(path)
    if not magic:
        raise NotAQueryLogError(
            f"{path} is not a robust_api query log (an empty file); {_LEFT_UNTOUCHED}. "
            "Delete it, or pass another path to start a log there."
        )
    if magic != SQLITE_MAGIC:
        raise NotAQueryLogError(
            f"{path} is not a robust_api query log (not an SQLite file); {_LEFT_UNTOUCHED}. "
            "Pass a new path, or a folder, to start a log there."
        )


# -- SQLite errors ---------------------------------------------------------------------------


def translate_sqlite_error(path: Path, exc: sqlite3.Error, doing: str) -> QueryLogError:
    """The typed error for an ``sqlite3`` error met while ``doing`` something with the log at ``path``.

    Damaged files give :class:`NotAQueryLogError`; locks held too long, permissions, a full
    disk and other I/O problems give :class:`LogAccessError`.
    """
    name = getattr(exc, "sqlite_errorname", "") or ""
    text = " ".join(str(exc).split())[:300]
    if name.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB", "SQLITE_FORMAT")) or any(
        phrase in text for phrase in ("malformed", "not a database", "no such table", "no such column")
    ):
        return NotAQueryLogError(f"{path} is damaged or not a robust_api query log ({text}) while {doing}")
    if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")) or "locked" in text:
        return LogAccessError(
            f"{path} stayed locked by another process for more than {BUSY_TIMEOUT_S:g} s while {doing} ({text}); "
            "retry when the other process is done"
        )
    if name.startswith("SQLITE_FULL"):
        return LogAccessError(f"the disk holding {path} is full ({text}) while {doing}; free some space and retry")
    if name.startswith(("SQLITE_CANTOPEN", "SQLITE_READONLY", "SQLITE_PERM", "SQLITE_AUTH")):
        return LogAccessError(
            f"cannot {doing} {path} ({text}). Reading a log needs read access to it and, for a log in WAL mode, "
            "write access to its folder (for the -wal/-shm side files) unless those files already exist; "
            "writing needs write access to both. Copy the log to a writable folder if needed."
        )
    if isinstance(exc, sqlite3.ProgrammingError):
        return LogAccessError(f"cannot {doing} {path}: {text} (was the log closed?)")
    return LogAccessError(f"cannot {doing} {path}: {text}")


# -- the schema check ------------------------------------------------------------------------


def _normalized(sql: Optional[str]) -> Optional[str]:
    return None if sql is None else " ".join(sql.split())


@functools.lru_cache(maxsize=1)
def _expected_objects() -> tuple[dict, dict]:
    """(what SCHEMA creates, what SQLite's ANALYZE may add): (type, name) → (tbl_name, normalized sql)."""
    conn = sqlite3.connect(":memory:")
    try:
        for statement in SCHEMA_STATEMENTS:
            conn.execute(statement)
        ours = {(t, n): (tbl, _normalized(sql)) for t, n, tbl, sql in conn.execute(
            "SELECT type, name, tbl_name, sql FROM sqlite_master")}
        conn.execute("ANALYZE")  # sqlite_stat1 (and sqlite_stat4 where built in): planner statistics only
        extra = {(t, n): (tbl, _normalized(sql)) for t, n, tbl, sql in conn.execute(
            "SELECT type, name, tbl_name, sql FROM sqlite_master") if (t, n) not in ours}
    finally:
        conn.close()
    return ours, extra


def _describe(kind: str, name: str, table: str) -> str:
    return f"{kind} {name!r}" + (f" on table {table!r}" if kind in ("index", "trigger") and table != name else "")


def _schema_problems(rows: list) -> list[str]:
    ours, allowed = _expected_objects()
    problems, seen = [], set()
    # triggers and views first: they are what could show or store other votes than the tables hold
    for kind, name, table, sql in sorted(rows, key=lambda r: (r[0] not in ("trigger", "view"), str(r[0]), str(r[1]))):
        key = (kind, name)
        seen.add(key)
        if kind == "trigger":
            problems.append(f"{_describe(kind, name, table)}: query logs never contain triggers")
        elif kind == "view":
            problems.append(f"view {name!r}: query logs never contain views")
        elif key in ours:
            if (table, _normalized(sql)) != ours[key]:
                shown = (_normalized(sql) or "")[:160]
                problems.append(f"{_describe(kind, name, table)} is not defined as robust_api defines it ({shown!r})")
        elif key in allowed and (table, _normalized(sql)) == allowed[key]:
            continue
        else:
            problems.append(f"{_describe(kind, name, table)} is not part of a query log")
    for kind, name in ours:
        if (kind, name) not in seen:
            problems.append(f"{kind} {name!r} is missing")
    return problems


def check_log_connection(conn: sqlite3.Connection, path: Path) -> None:
    """Check, through ``conn``, that the database is a query log this release reads.

    Reads ``sqlite_master`` (no table, view or trigger is evaluated for that), compares it
    with the store's own schema, and only then reads ``meta``.

    Raises:
        NotAQueryLogError: not a query log (no log tables, another format, a newer version, damaged).
        UntrustedLogError: log tables, but not exactly the store's schema (names the first difference).
    """
    try:
        rows = conn.execute("SELECT type, name, tbl_name, sql FROM sqlite_master").fetchall()
    except sqlite3.Error as exc:
        error = translate_sqlite_error(path, exc, "read the schema of")
        if not isinstance(error, NotAQueryLogError):  # permissions, locks: not the file's fault
            raise error from None
        raise NotAQueryLogError(
            f"{path} is not a robust_api query log: its schema cannot be read "
            f"({' '.join(str(exc).split())[:200]}); {_LEFT_UNTOUCHED}"
        ) from None
    if not rows:
        raise NotAQueryLogError(
            f"{path} is an SQLite database without tables, not a robust_api query log; {_LEFT_UNTOUCHED}. "
            "Delete it, or pass another path to start a log there."
        )
    if not {name for _, name, _, _ in rows} & {"meta", "calls", "queries"}:
        raise NotAQueryLogError(f"{path} is an SQLite database but not a robust_api query log; {_LEFT_UNTOUCHED}")
    problems = _schema_problems(rows)
    if problems:
        more = f" (and {len(problems) - 1} more difference{'s' if len(problems) > 2 else ''})" if len(problems) > 1 else ""
        raise UntrustedLogError(
            f"{path} is not a robust_api query log as robust_api writes it: {problems[0]}{more}. A file with another "
            f"schema could show or store other votes than its tables hold, so it was refused before any row was "
            f"read; {_LEFT_UNTOUCHED}"
        )
    try:
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
    except sqlite3.Error as exc:
        raise translate_sqlite_error(path, exc, "reading the meta table of") from None
    if meta.get("format") != FORMAT_NAME:
        raise NotAQueryLogError(
            f"{path} is an SQLite database but not a robust_api query log (its meta table names no robust_api "
            f"format); {_LEFT_UNTOUCHED}"
        )
    raw_version = meta.get("format_version")
    try:
        if isinstance(raw_version, bool) or not isinstance(raw_version, (str, int)):
            raise ValueError
        version = int(raw_version)
    except ValueError:
        shown = repr(raw_version)[:40]
        raise NotAQueryLogError(f"{path} has an unreadable log format_version {shown}; {_LEFT_UNTOUCHED}") from None
    if version > FORMAT_VERSION:
        raise NotAQueryLogError(
            f"{path} has log format_version {version}, newer than this robust_api reads ({FORMAT_VERSION}); "
            "upgrade robust_api"
        )
    if version < 1:
        raise NotAQueryLogError(f"{path} has an unknown log format_version {version}; {_LEFT_UNTOUCHED}")


# -- connections -----------------------------------------------------------------------------


def _harden(conn: sqlite3.Connection) -> None:
    """Settings of every connection: the file's schema may only call innocuous SQL functions,
    extensions stay off, and damaged pages are detected early."""
    if hasattr(conn, "enable_load_extension"):
        conn.enable_load_extension(False)
    conn.execute("PRAGMA trusted_schema=OFF")
    conn.execute("PRAGMA cell_size_check=ON")


def _connect_read_only(path: Path, immutable: bool = False) -> sqlite3.Connection:
    uri = Path(os.path.abspath(path)).as_uri() + ("?mode=ro&immutable=1" if immutable else "?mode=ro")
    conn = sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_S, check_same_thread=False, isolation_level=None)
    try:
        _harden(conn)
        conn.execute("PRAGMA query_only=ON")
    except BaseException:
        conn.close()
        raise
    return conn


def _on_read_only_file_system(folder: Path) -> bool:
    """True when ``folder`` is on a file system mounted read-only (nobody can write there)."""
    if not hasattr(os, "statvfs"):  # pragma: no cover - Windows
        return False
    try:
        return bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def _connect_writable(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(os.fspath(path), timeout=BUSY_TIMEOUT_S, check_same_thread=False, isolation_level=None)
    try:
        _harden(conn)
    except BaseException:
        conn.close()
        raise
    return conn


def _make_durable(conn: sqlite3.Connection, path: Path) -> None:
    mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
    if str(mode).lower() != "wal":  # e.g. a file system without shared memory: rollback journal, still durable
        logger.warning("query log %s runs in journal mode %s, not WAL: readers wait for writers", path, mode)
    conn.execute("PRAGMA synchronous=FULL")  # a committed batch survives power loss, not only a crash
    conn.execute("PRAGMA fullfsync=ON")  # macOS: flush the drive's cache too (no effect elsewhere)
    conn.execute("PRAGMA foreign_keys=ON")


def _fsync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # Windows cannot open folders; its file system journals the entry itself
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _create(path: Path) -> None:
    """Create a complete, empty log at ``path`` unless a file appears there first (then keep it)."""
    folder = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise NotAQueryLogError(f"cannot create {path}: {folder} exists and is not a folder") from None
    except OSError as exc:
        raise LogAccessError(f"cannot create the folder {folder} for the log: {exc.strerror or exc}") from None
    temporary = folder / f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.creating"
    try:
        os.close(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    except OSError as exc:
        raise LogAccessError(
            f"cannot create a log in {folder}: {exc.strerror or exc}; pass a path in a folder you can write"
        ) from None
    try:
        conn = _connect_writable(temporary)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("BEGIN IMMEDIATE")
            for statement in SCHEMA_STATEMENTS:
                conn.execute(statement)
            conn.executemany(
                "INSERT INTO meta (key, value) VALUES (?, ?)",
                [("format", FORMAT_NAME), ("format_version", str(FORMAT_VERSION)), ("created", repr(time.time()))],
            )
            conn.execute("COMMIT")
        finally:
            conn.close()  # the only connection: SQLite checkpoints and removes the -wal/-shm it made
        try:
            os.link(temporary, path)  # atomic, and fails if the name exists
        except FileExistsError:
            return  # another process created the log first: open that one
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.ENOSYS):
                raise LogAccessError(f"cannot create {path}: {exc.strerror or exc}") from None
            _copy_exclusive(temporary, path)  # a file system without hard links
        _fsync_folder(folder)
    except sqlite3.Error as exc:
        raise translate_sqlite_error(path, exc, "create") from None
    finally:
        # only files this process created: the private temporary and what SQLite made for it
        for leftover in (temporary, Path(f"{temporary}-wal"), Path(f"{temporary}-shm"), Path(f"{temporary}-journal")):
            try:
                leftover.unlink()
            except FileNotFoundError:
                pass
            except OSError as exc:  # pragma: no cover - left behind, harmless
                logger.warning("could not remove the temporary file %s: %s", leftover, exc)


def _copy_exclusive(source: Path, path: Path) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    except FileExistsError:
        return
    except OSError as exc:
        raise LogAccessError(f"cannot create {path}: {exc.strerror or exc}") from None
    with os.fdopen(fd, "wb") as out, open(source, "rb") as data:
        shutil.copyfileobj(data, out)
        out.flush()
        os.fsync(out.fileno())


def _checked(conn: sqlite3.Connection, path: Path) -> sqlite3.Connection:
    """``conn`` once :func:`check_log_connection` passed; closed when it did not."""
    try:
        check_log_connection(conn, path)
    except BaseException:
        conn.close()
        raise
    return conn


def connect_log(path: Path, read_only: bool) -> sqlite3.Connection:
    """A checked connection to the log at ``path``: read-only, or for writing (created when missing).

    Raises:
        FileNotFoundError: read-only and nothing at ``path``.
        NotAQueryLogError, UntrustedLogError: see :func:`check_log_connection` and
            :func:`check_regular_file`; the file is left untouched.
        LogAccessError: permissions, locks, a full disk.
    """
    if not check_regular_file(path):
        if read_only:
            raise FileNotFoundError(f"no query log at {os.fspath(path)!r}")
        _create(path)
        if not check_regular_file(path):  # pragma: no cover - deleted again at once
            raise LogAccessError(f"{path} disappeared while it was being created; retry")
    _check_magic(path)
    # On a read-only file system no process can write the log (a writer must create its -wal
    # there), which is exactly when SQLite's immutable=1 is right; mode=ro could not even open
    # a WAL log there without its -wal and -shm files.
    frozen = read_only and not os.path.lexists(f"{path}-wal") and _on_read_only_file_system(path.parent)
    try:
        if not frozen and not os.path.lexists(f"{path}-wal"):
            # nobody has it open in WAL mode: refuse a foreign file without creating side files
            # next to it (this probe only refuses; what it passes is checked again below)
            _checked(_connect_read_only(path, immutable=True), path).close()
        # read-only first, so that nothing (not even a hot journal's rollback) writes before the check
        reader = _checked(_connect_read_only(path, immutable=frozen), path)
        if read_only:
            return reader
        reader.close()
        conn = _checked(_connect_writable(path), path)  # the same file still: it may have been replaced
        try:
            _make_durable(conn, path)
        except BaseException:
            conn.close()
            raise
        return conn
    except sqlite3.Error as exc:
        raise translate_sqlite_error(path, exc, "open" if read_only else "open for writing") from None
