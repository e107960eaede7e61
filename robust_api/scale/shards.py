"""Log shards of a distributed run: one SQLite file per worker, all in one folder.

A worker writes only its own shard (:class:`ShardLog`), so workers never contend for a
lock. Before paying for a sample it also looks for the answer in the run's *reuse log*, read
only: the driver's log (every finished call is merged there), or ``recovered.sqlite3`` in the
shard folder when the driver's log is not a file. Workers never read each other's shards.

When a worker dies, the driver merges its shard into the reuse log *before* its images are
sent again. The driver is then the only process that opens the dead shard, so SQLite's crash
recovery runs on that open and every answer the dead worker committed is seen, including one
whose commit was cut short by the crash (in WAL mode, such a commit reaches the WAL file and is
recovered, but a process that already had the shard open would not see it). So a killed
worker's images are redone without paying twice for what it had committed, and a rerun with
the same seed resumes for free (the driver first merges shards left by a run that never
finished). ``robust-api merge-logs`` merges shard files by hand.
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

__all__ = ["ShardLog", "shard_paths", "shard_path", "RECOVERED_LOG"]

logger = logging.getLogger(__name__)

SHARD_GLOB = "worker-*.sqlite3"
#: the reuse log in the shard folder when the driver's log is not a file
RECOVERED_LOG = "recovered.sqlite3"


def shard_path(folder: Path, slot: int, generation: int = 0) -> Path:
    """The shard of worker ``slot`` (its ``generation``-th replacement after a crash)."""
    suffix = "" if generation == 0 else f"-{generation}"
    return folder / f"worker-{slot}{suffix}.sqlite3"


def shard_paths(folder: Path) -> list[Path]:
    """The shards in ``folder``, sorted by name."""
    return sorted(Path(folder).glob(SHARD_GLOB))


class ShardLog(QueryLog):
    """A worker's shard (written) and the run's reuse log (read for reusable answers).

    Args:
        path: this worker's SQLite shard (created if missing).
        reuse_log: the run's reuse log (see the module docstring), read only once it exists.
    """

    def __init__(self, path: Path, reuse_log: Path):
        self.primary = SQLiteQueryLog(path)
        self.path = self.primary.path
        self.reuse_log = Path(reuse_log)
        self._reader: Optional[QueryLog] = None

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

    def find_reusable(self, header: CallHeader, phase: str, count: int) -> dict[int, QueryRecord]:
        """This shard's reusable answers, completed from the run's reuse log (read only)."""
        found = self.primary.find_reusable(header, phase, count)
        if len(found) >= count:
            return found
        try:
            if self._reader is None:
                if not self.reuse_log.exists():
                    return found  # nothing merged yet
                self._reader = open_log(self.reuse_log)
            answers = self._reader.find_reusable(header, phase, count)
        except (OSError, ValueError) as exc:  # being created right now, or unreadable: pay instead
            logger.warning("could not look for reusable answers in %s: %s", os.fspath(self.reuse_log), exc)
            return found
        for index, record in answers.items():
            found.setdefault(index, record)
        return found

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        self.primary.close()

    def __repr__(self) -> str:
        return f"ShardLog({os.fspath(self.path)!r})"
