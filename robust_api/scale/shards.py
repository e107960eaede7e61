"""Log shards of a distributed run: one SQLite file per worker, all in one folder.

A worker writes only its own shard (:class:`ShardLog`), so workers never contend for a
lock. Before paying for a sample it also looks for the answer in the run's other logs, read
only: the other shards of the folder (a worker that died committed its answers there) and
the driver's log (calls merged from earlier runs). So a killed worker's images are redone
elsewhere without paying twice for what it had committed, and a rerun with the same seed
resumes for free. The driver merges each finished call into its own log
(:func:`robust_api.query_logs.merge_calls`); ``robust-api merge-logs`` merges shard files.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

from ..query_logs.exchange import open_log
from ..query_logs.records import CallHeader, CallLog, QueryRecord
from ..query_logs.store import QueryLog, SQLiteQueryLog

__all__ = ["ShardLog", "shard_paths", "shard_path"]

logger = logging.getLogger(__name__)

SHARD_GLOB = "worker-*.sqlite3"


def shard_path(folder: Path, slot: int, generation: int = 0) -> Path:
    """The shard of worker ``slot`` (its ``generation``-th replacement after a crash)."""
    suffix = "" if generation == 0 else f"-{generation}"
    return folder / f"worker-{slot}{suffix}.sqlite3"


def shard_paths(folder: Path) -> list[Path]:
    """The shards in ``folder``, sorted by name."""
    return sorted(Path(folder).glob(SHARD_GLOB))


class ShardLog(QueryLog):
    """A worker's shard (written) and the run's other logs (read for reusable answers).

    Args:
        path: this worker's SQLite shard (created if missing).
        folder: the run's shard folder (its other shards are read).
        driver_log: the driver's SQLite log, also read (None: not a file).
    """

    def __init__(self, path: Path, folder: Path, driver_log: Optional[Path] = None):
        self.primary = SQLiteQueryLog(path)
        self.path = self.primary.path
        self.folder = Path(folder)
        self.driver_log = driver_log
        self._readers: dict[Path, QueryLog] = {}

    def begin_call(self, header: CallHeader) -> None:
        self.primary.begin_call(header)

    def append(self, run_id: str, records: Sequence[QueryRecord]) -> None:
        self.primary.append(run_id, records)

    def finish_call(self, run_id: str, status: str) -> None:
        self.primary.finish_call(run_id, status)

    def load_call(self, run_id: str, with_raw: bool = True) -> CallLog:
        return self.primary.load_call(run_id, with_raw)

    def run_ids(self) -> list[str]:
        return self.primary.run_ids()

    def has_call(self, run_id: str) -> bool:
        return self.primary.has_call(run_id)

    def call_summaries(self):
        return self.primary.call_summaries()

    def source_lock(self, header: CallHeader, phase: str):
        return self.primary.source_lock(header, phase)

    def _others(self) -> list[Path]:
        others = [path for path in shard_paths(self.folder) if path.resolve() != self.path.resolve()]
        if self.driver_log is not None and self.driver_log.exists():
            others.append(self.driver_log)
        return others

    def _reader(self, path: Path) -> QueryLog:
        reader = self._readers.get(path)
        if reader is None:
            reader = self._readers[path] = open_log(path)
        return reader

    def find_reusable(self, header: CallHeader, phase: str, count: int) -> dict[int, QueryRecord]:
        """This shard's reusable answers, completed from the run's other logs (read only)."""
        found = self.primary.find_reusable(header, phase, count)
        for path in self._others():
            if len(found) >= count:
                break
            try:
                answers = self._reader(path).find_reusable(header, phase, count)
            except (OSError, ValueError) as exc:  # a shard being created right now, or unreadable
                logger.warning("could not look for reusable answers in %s: %s", os.fspath(path), exc)
                continue
            for index, record in answers.items():
                found.setdefault(index, record)
        return found

    def close(self) -> None:
        for reader in self._readers.values():
            reader.close()
        self._readers.clear()
        self.primary.close()

    def __repr__(self) -> str:
        return f"ShardLog({os.fspath(self.path)!r})"
