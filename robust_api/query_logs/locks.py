"""One payer per query: the locks a call holds while it sends the missing samples of one phase.

Two calls on the same *source* (image digest, seed, noise σ, provider, model version and
denoiser, preprocessing: what :meth:`~robust_api.query_logs.QueryLog.find_reusable` matches) would send the
very same noisy images. :meth:`QueryLog.source_lock` makes one of them pay: a call holds its
source's lock (for one phase) while it looks for reusable answers, sends what is missing and
commits it, so a concurrent call — another thread, or another process writing the same SQLite
log — waits, then finds those answers in the log and reuses them.

How:

- **Between processes** (SQLite logs, POSIX): an advisory byte-range lock (``fcntl.lockf``) of
  one byte at offset ``sha256(source, phase) mod 2³¹`` of one side file next to the log,
  ``<log>.lock`` (the log's real path, symlinks resolved, plus ``.lock``). The file is empty,
  created by the first call that sends queries and never deleted: deleting it while another
  process holds a lock on it would let a third process lock a new file of the same name.
  The operating system releases a process's locks when it exits or is killed (``kill -9``),
  so a dead payer never blocks a later one. Two sources whose offsets collide only wait for
  each other.
- **Between threads** (every store): POSIX record locks belong to a process, not a thread, so
  each (lock file, offset) — or, for other stores, each (log object, source, phase) — also
  has a ``threading.Lock``; ``certify_many`` threads certifying the same image queue on it.
- **No deadlock**: a call holds at most one source lock at a time (``_run_phase`` takes it and
  releases it before it returns) and waits for nothing else while waiting for it. The
  kernel's deadlock detector sees processes, not threads, and may refuse a wait that is no
  deadlock (``EDEADLK``): the wait is then retried after a short sleep.
- **Where it cannot work**: without ``fcntl`` (Windows) only the in-process lock is taken; a
  lock file that cannot be opened or locked (a read-only folder, a file system without
  locks) logs one warning and falls back to the in-process lock. In both cases two
  processes may both pay for the same queries; the log and every certificate stay correct.
  Locks on network file systems are as reliable as the file system's lock service.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import stat
import threading
import time
from collections.abc import Iterator
from typing import Any, Optional

try:  # POSIX only
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["LOCK_SUFFIX", "source_key", "lock_offset", "in_process_source_lock", "file_source_lock"]

logger = logging.getLogger(__name__)

#: The side file of an SQLite log that carries its source locks: ``<log>.lock``.
LOCK_SUFFIX = ".lock"
#: Lock offsets lie in [0, 2³¹): a 32-bit ``off_t`` takes them on every POSIX system.
_OFFSET_SPACE = 1 << 31
#: Longest sleep between two waits refused with EDEADLK (seconds).
_MAX_RETRY_SLEEP_S = 0.2


def source_key(header: Any, phase: str) -> str:
    """The identity of what one phase of a call sends: equal keys send identical queries.

    Args:
        header: a :class:`~robust_api.query_logs.CallHeader`.
        phase: "clean", "selection", "estimation" or "predict".

    Returns:
        A JSON string of the fields ``find_reusable`` matches, and the phase.
    """
    return json.dumps([
        header.image_digest, int(header.seed), repr(float(header.noise_sd)), header.provider, header.model_version,
        header.denoiser_id, header.denoiser_digest, header.preprocessing, phase,
    ])


def lock_offset(key: str) -> int:
    """The byte of ``<log>.lock`` that stands for ``key``: in [0, 2³¹)."""
    return int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big") % _OFFSET_SPACE


class _ThreadLocks:
    """One ``threading.Lock`` per key, kept only while some thread holds or waits for it."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[Any, list] = {}  # key -> [lock, threads holding or waiting]

    @contextlib.contextmanager
    def hold(self, key: Any, what: str) -> Iterator[None]:
        with self._guard:
            entry = self._locks.setdefault(key, [threading.Lock(), 0])
            entry[1] += 1
        try:
            if not entry[0].acquire(blocking=False):
                logger.info("waiting for another thread of this process that sends the same %s queries", what)
                entry[0].acquire()
            try:
                yield
            finally:
                entry[0].release()
        finally:
            with self._guard:
                entry[1] -= 1
                if entry[1] == 0:
                    del self._locks[key]


class _LockFiles:
    """The open descriptor of each lock file, shared by the threads of this process.

    A process drops *all* its POSIX locks on a file when it closes *any* descriptor of it, so
    each lock file is opened once and closed only when no thread holds or takes a lock on it.
    """

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._open: dict[str, list] = {}  # path -> [fd, users]
        self._warned: set[str] = set()

    def acquire(self, path: str) -> Optional[int]:
        """The descriptor of ``path`` (opened or created when needed), or None when it cannot be used."""
        with self._guard:
            entry = self._open.get(path)
            if entry is None:
                fd = self._open_file(path)
                if fd is None:
                    return None
                entry = self._open[path] = [fd, 0]
            entry[1] += 1
            return entry[0]

    def release(self, path: str) -> None:
        with self._guard:
            entry = self._open[path]
            entry[1] -= 1
            if entry[1] == 0:
                del self._open[path]
                os.close(entry[0])

    def _open_file(self, path: str) -> Optional[int]:
        flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
        flags |= getattr(os, "O_NONBLOCK", 0)  # never block on a FIFO put in its place
        try:
            fd = os.open(path, flags, 0o666)
        except OSError as exc:
            self.warn(path, f"cannot open it ({type(exc).__name__}: {exc.strerror})")
            return None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            self.warn(path, "it is not a regular file")
            return None
        return fd

    def warn(self, path: str, why: str) -> None:
        """Log once per lock file that cross-process locking is off for it (called under the guard
        or from a thread that uses the file)."""
        if path not in self._warned:
            self._warned.add(path)
            logger.warning(
                "cannot lock %s (%s): processes certifying the same image into this log at the same time may "
                "each pay for the same queries (the log and certificates stay correct). Make the log's folder "
                "writable, or remove whatever is at that path if no robust_api process is using the log.",
                path, why,
            )


_THREADS = _ThreadLocks()
_FILES = _LockFiles()


def _reset_after_fork() -> None:  # a forked child holds none of its parent's locks
    global _THREADS, _FILES
    _THREADS, _FILES = _ThreadLocks(), _LockFiles()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)


def _lock_range(fd: int, offset: int, path: str, what: str) -> bool:
    """Take the exclusive lock on byte ``offset`` of ``fd``, waiting as long as another process
    holds it. Returns False (after a warning) when the file system refuses locks."""
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, offset)
        return True
    except OSError as exc:
        if exc.errno not in (errno.EACCES, errno.EAGAIN):
            _FILES.warn(path, f"{type(exc).__name__}: {exc.strerror}")
            return False
    logger.info("waiting for another process that sends the same %s queries into this log (%s)", what, path)
    pause = 0.005
    while True:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX, 1, offset)
            return True
        except OSError as exc:
            if exc.errno != errno.EDEADLK:
                _FILES.warn(path, f"{type(exc).__name__}: {exc.strerror}")
                return False
        # the kernel saw a cycle between processes that is none between threads: wait and retry
        time.sleep(pause)
        pause = min(_MAX_RETRY_SLEEP_S, 2 * pause)


@contextlib.contextmanager
def in_process_source_lock(owner: object, header: Any, phase: str) -> Iterator[None]:
    """Hold the source lock of (``owner``, source, phase) against the other threads of this
    process (the lock of logs that live in one process: memory logs, imports, custom stores)."""
    key = source_key(header, phase)
    with _THREADS.hold(("object", id(owner), key), phase):
        yield


@contextlib.contextmanager
def file_source_lock(log_path: "os.PathLike[str] | str", header: Any, phase: str) -> Iterator[None]:
    """Hold the source lock of (source, phase) against every thread and process writing the
    log at ``log_path``: a byte-range lock on ``<log>.lock`` plus an in-process lock.

    Blocks while another holder sends the same queries; released on exit (and by the OS if
    the process dies). Never raises for a lock file it cannot use: it warns and holds the
    in-process lock only.
    """
    path = os.path.realpath(os.fspath(log_path)) + LOCK_SUFFIX
    offset = lock_offset(source_key(header, phase))
    with _THREADS.hold(("file", path, offset), phase):
        files = _FILES
        fd = files.acquire(path) if fcntl is not None else None
        if fd is None:
            yield
            return
        try:
            locked = _lock_range(fd, offset, path, phase)
            try:
                yield
            finally:
                if locked:
                    fcntl.lockf(fd, fcntl.LOCK_UN, 1, offset)
        finally:
            files.release(path)
