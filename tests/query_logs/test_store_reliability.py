"""The SQLite store under concurrency and crashes: readers never lose a writer's commits,
concurrent creators all get the same log, records read back in one fixed order.

The chaos test kills a writer with SIGKILL while two reader processes keep opening the log
the way ``robust_api.open_log`` and ``robust-api analyze`` do. Processes are forked from the
test process (robust_api is already imported there), so a round costs milliseconds and the
test stays short on 2 cores.
"""

from __future__ import annotations

import importlib.util
import json
import multiprocessing
import os
import random
import select
import signal
import sqlite3
import time
import uuid
from pathlib import Path

import pytest

import robust_api
from robust_api.query_logs import CallHeader, QueryRecord, SQLiteQueryLog

needs_fork = pytest.mark.skipif(
    "fork" not in multiprocessing.get_all_start_methods() or not hasattr(signal, "SIGKILL"),
    reason="needs fork() and SIGKILL (POSIX)",
)

ROUNDS = 24
RECORDS = [("selection", 0), ("selection", 1), ("estimation", 0), ("estimation", 1), ("estimation", 2)]


def _header(run_id: str) -> CallHeader:
    return CallHeader(
        run_id=run_id, kind="certify", image_digest="ab" * 32, image_shape=(8, 8, 1), provider="chaos",
        model_version=None, denoiser_id=None, denoiser_digest=None, noise_sd=0.25, seed=7,
        params={"method": "cohen", "selection": "noise", "N0": 2, "N": 3, "alpha": 0.001}, created=time.time(),
    )


def _records() -> list[QueryRecord]:
    return [QueryRecord(phase, index, "A", "A", 0.001, 0.0, time.time()) for phase, index in RECORDS]


def _writer(path: str, report_fd: int) -> None:
    """Commit calls until killed; write each run id to ``report_fd`` once its append returned."""
    log = SQLiteQueryLog(path)
    while True:
        run_id = uuid.uuid4().hex
        log.begin_call(_header(run_id))
        log.append(run_id, _records())
        os.write(report_fd, (run_id + "\n").encode())  # committed: append is durable on return
        log.finish_call(run_id, "complete")


def _reader(path: str, stop, errors, reads) -> None:
    """Open the log again and again as open_log / analyze do; record every unexpected error."""
    turn = 0
    while not stop.is_set():
        turn += 1
        try:
            if turn % 3 == 0:
                robust_api.analyze(path)
            else:
                with robust_api.open_log(path) as log:
                    for call in log:
                        assert len(call.records) in (0, len(RECORDS)), call  # one append: all or nothing
            with reads.get_lock():
                reads.value += 1
        except FileNotFoundError:
            pass  # the first writer has not created the log yet
        except Exception as exc:  # noqa: BLE001 - reported to the test, which fails on it
            errors.put(f"{type(exc).__name__}: {exc}")
            time.sleep(0.01)


def _read_reports(fd: int, want: int, deadline: float) -> list[str]:
    lines, buffer = [], b""
    while len(lines) < want and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.05)
        if ready:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            buffer += chunk
            *complete, buffer = buffer.split(b"\n")
            lines += [line.decode() for line in complete if line]
    return lines


def _drain(fd: int) -> list[str]:
    data = b""
    while select.select([fd], [], [], 0)[0]:
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        data += chunk
    return [line.decode() for line in data.split(b"\n") if len(line) == 32]


def _committed_calls(path: Path) -> dict[str, int]:
    """run id → number of query rows, read with a plain read-only connection (not the store)."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30.0)
    try:
        rows = conn.execute(
            "SELECT c.run_id, COUNT(q.id) FROM calls c LEFT JOIN queries q ON q.call_id = c.call_id GROUP BY c.call_id"
        ).fetchall()
    finally:
        conn.close()
    return dict(rows)


@needs_fork
def test_writer_killed_while_two_readers_open_the_log_keeps_every_committed_call(tmp_path):
    """Chaos: SIGKILL a writer at random moments, ROUNDS times, while two processes keep
    opening the log; every call whose append returned must be in the log with all its records."""
    ctx = multiprocessing.get_context("fork")
    path = tmp_path / "chaos.sqlite3"
    stop, errors, reads = ctx.Event(), ctx.Queue(), ctx.Value("i", 0)
    readers = [ctx.Process(target=_reader, args=(str(path), stop, errors, reads), daemon=True) for _ in range(2)]
    for reader in readers:
        reader.start()
    rng = random.Random(15)
    reported: list[str] = []
    try:
        for round_number in range(ROUNDS):
            read_fd, write_fd = os.pipe()
            pid = os.fork()
            if pid == 0:  # the writer
                os.close(read_fd)
                try:
                    _writer(str(path), write_fd)
                finally:
                    os._exit(1)
            os.close(write_fd)
            reads_before = reads.value
            try:
                wanted = rng.randint(1, 6)
                got = _read_reports(read_fd, wanted, time.monotonic() + 60)
                assert len(got) >= wanted, f"round {round_number}: the writer reported {len(got)} of {wanted} calls"
                deadline = time.monotonic() + 60  # (a bound for a stuck reader, not a timing assumption)
                while reads.value < reads_before + 2 and time.monotonic() < deadline:
                    time.sleep(0.001)  # the readers opened the log while this writer was alive
                assert reads.value >= reads_before + 2, f"round {round_number}: the readers made no progress"
                time.sleep(rng.random() * 0.01)  # kill anywhere: mid-transaction, between calls
                os.kill(pid, signal.SIGKILL)
                _, status = os.waitpid(pid, 0)
                assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
                got += _drain(read_fd)  # reported between the last read and the kill
            finally:
                os.close(read_fd)
            reported += got
            stored = _committed_calls(path)
            lost = [run_id for run_id in reported if stored.get(run_id) != len(RECORDS)]
            assert not lost, f"round {round_number}: {len(lost)} of {len(reported)} committed calls lost"
        time.sleep(0.2)  # the readers also open the log left by the last killed writer
    finally:
        stop.set()
        for reader in readers:
            reader.join(timeout=30)
            if reader.is_alive():
                reader.kill()
    problems = []
    while not errors.empty():
        problems.append(errors.get())
    assert not problems, f"readers failed {len(problems)} times, first: {problems[:3]}"
    assert reads.value >= 2 * ROUNDS  # the readers really overlapped the writers
    # the log itself, through the store: every reported call, complete or cut off after append
    with robust_api.open_log(path) as log:
        found = {call.header.run_id: call for call in log}
    assert set(reported) <= set(found)
    for run_id in reported:
        call = found[run_id]
        assert sorted((r.phase, r.sample_index) for r in call.records) == sorted(RECORDS)
        assert call.status in ("complete", "running")


# -- concurrent creators ----------------------------------------------------------------------

CREATORS = 4
CREATION_ROUNDS = 25


def _creator(path: str, barrier, results) -> None:
    """Create (or open) the log at the same moment as the others, then write one call to it."""
    try:
        barrier.wait(timeout=60)
        log = SQLiteQueryLog(path)
        run_id = uuid.uuid4().hex
        log.begin_call(_header(run_id))
        log.append(run_id, _records())
        log.finish_call(run_id, "complete")
        log.close()
        results.put(("ok", run_id))
    except Exception as exc:  # noqa: BLE001 - reported to the test, which fails on it
        results.put(("error", f"{type(exc).__name__}: {exc}"))


def _early_reader(path: str, barrier, results) -> None:
    """Open the log while it is being created: nothing there yet, or a complete log."""
    try:
        barrier.wait(timeout=60)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with robust_api.open_log(path) as log:
                    log.run_ids()
                results.put(("read", None))
                return
            except FileNotFoundError:
                time.sleep(0)
        results.put(("error", "the log never appeared"))
    except Exception as exc:  # noqa: BLE001
        results.put(("error", f"{type(exc).__name__}: {exc}"))


@needs_fork
def test_processes_creating_the_same_new_log_at_once_all_succeed(tmp_path):
    """CREATORS processes create one new log at the same moment (and one more opens it for
    reading), CREATION_ROUNDS times: every creator gets the same, complete log."""
    ctx = multiprocessing.get_context("fork")
    failures = []
    for round_number in range(CREATION_ROUNDS):
        path = tmp_path / f"round{round_number}" / "new.sqlite3"  # the folder does not exist either
        barrier, results = ctx.Barrier(CREATORS + 1), ctx.Queue()
        processes = [ctx.Process(target=_creator, args=(str(path), barrier, results)) for _ in range(CREATORS)]
        processes.append(ctx.Process(target=_early_reader, args=(str(path), barrier, results)))
        for process in processes:
            process.start()
        outcomes = [results.get(timeout=120) for _ in processes]
        for process in processes:
            process.join(timeout=60)
        failures += [f"round {round_number}: {text}" for kind, text in outcomes if kind == "error"]
        written = {text for kind, text in outcomes if kind == "ok"}
        if len(written) == CREATORS:
            with robust_api.open_log(path) as log:
                assert set(log.run_ids()) == written  # one log, holding every creator's call
        # the creators left no temporary file behind (only the log and SQLite's own side files)
        leftovers = [name for name in os.listdir(path.parent) if not name.startswith("new.sqlite3")]
        assert not leftovers, leftovers
    assert not failures, f"{len(failures)} failures, first: {failures[:3]}"


# -- the order records are read back in --------------------------------------------------------


@pytest.mark.parametrize("store", ["sqlite", "memory"])
def test_records_read_back_in_phase_then_index_order_whatever_order_batches_came_in(store, tmp_path):
    """Concurrent batches finish in any order (break 10: selection index 16 was read before 0):
    every store, and both export formats, give a call's records back in one order."""
    log = SQLiteQueryLog(tmp_path / "order.sqlite3") if store == "sqlite" else robust_api.query_logs.MemoryQueryLog()
    run_id = uuid.uuid4().hex
    log.begin_call(_header(run_id))
    rng = random.Random(10)
    batches = [[("estimation", i) for i in range(16, 32)], [("selection", i) for i in range(16, 20)],
               [("estimation", i) for i in range(0, 16)], [("clean", 0)], [("selection", i) for i in range(0, 16)]]
    for batch in batches:
        rng.shuffle(batch)  # even within one batch
        log.append(run_id, [QueryRecord(phase, index, f"L{index % 3}", {"i": index}, 0.01, 0.0, time.time())
                            for phase, index in batch])
    expected = [("clean", 0)] + [("selection", i) for i in range(20)] + [("estimation", i) for i in range(32)]
    call = log.load_call(run_id)
    assert [(r.phase, r.sample_index) for r in call.records] == expected
    assert [r.label for r in call.records] == [f"L{i % 3}" for _, i in expected]  # each record kept its own answer
    assert [(r.phase, r.sample_index) for r in next(iter(log)).records] == expected
    exports = [("jsonl", robust_api.export_jsonl)]
    if importlib.util.find_spec("pyarrow") is not None:
        exports.append(("parquet", robust_api.export_parquet))
    for suffix, export in exports:
        out = tmp_path / f"{store}.{suffix}"
        export(log, out)
        with robust_api.open_log(out) as again:
            assert [(r.phase, r.sample_index) for r in again.load_call(run_id).records] == expected
    if store == "sqlite":  # the export writes the records in that order too
        lines = (tmp_path / "sqlite.jsonl").read_text().splitlines()[2:]
        assert [tuple(json.loads(line)[key] for key in ("phase", "sample_index")) for line in lines] == expected
    log.close()


# -- opening: durability settings, side files, compatibility -----------------------------------


def test_writers_commit_with_synchronous_full_in_wal_mode_and_trust_no_schema(tmp_path):
    log = SQLiteQueryLog(tmp_path / "log.sqlite3")
    conn = log._conn
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL: a commit survives power loss
    assert conn.execute("PRAGMA trusted_schema").fetchone()[0] == 0
    log.close()
    with robust_api.open_log(tmp_path / "log.sqlite3") as reader:
        assert reader.read_only and reader._conn.execute("PRAGMA query_only").fetchone()[0] == 1
        assert reader._conn.execute("PRAGMA trusted_schema").fetchone()[0] == 0


def test_a_reader_never_removes_side_files_a_writer_uses(tmp_path):
    path = tmp_path / "log.sqlite3"
    writer = SQLiteQueryLog(path)
    run_id = uuid.uuid4().hex
    writer.begin_call(_header(run_id))
    writer.append(run_id, _records())  # committed, in the -wal file until a checkpoint
    wal, shm = Path(f"{path}-wal"), Path(f"{path}-shm")
    assert wal.stat().st_size > 0
    for _ in range(3):
        with robust_api.open_log(path) as log:
            assert len(log.load_call(run_id)) == len(RECORDS)
        robust_api.analyze(path)
    assert wal.exists() and shm.exists() and wal.stat().st_size > 0
    writer.finish_call(run_id, "complete")
    writer.close()  # the last writer: SQLite itself checkpoints and removes its side files
    with robust_api.open_log(path) as log:
        assert log.load_call(run_id).status == "complete"


def test_a_log_written_by_release_0_1_0_still_opens(tmp_path):
    """format_version 1 as the previous release created it: its schema statements verbatim."""
    schema = """
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
    path = tmp_path / "old.sqlite3"
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=WAL")
    with conn:
        conn.executescript(schema)
        conn.executemany("INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)",
                         [("format", "robust_api.query_log"), ("format_version", "1"), ("created", "1.5")])
        conn.execute("INSERT INTO calls VALUES (1, 'r1', 'predict', 1.0, 'd', '[8, 8, 1]', 'p', NULL, NULL, NULL, 0.0, 0, "
                     "'{\"N\": 1}', 'complete')")
        conn.execute("INSERT INTO queries VALUES (1, 1, 'clean', 0, 'A', '\"A\"', 0.1, 0.0, 1.0, NULL, 0)")
    conn.close()
    with robust_api.open_log(path) as log:
        [call] = list(log)
        assert call.header.image_shape == (8, 8, 1) and call.records[0].label == "A"
    log = SQLiteQueryLog(path)  # and a writer adds to it
    log.begin_call(_header("r2"))
    log.close()
    with robust_api.open_log(path) as log:
        assert log.run_ids() == ["r1", "r2"]


def test_on_a_read_only_file_system_a_reader_uses_immutable_and_creates_nothing(tmp_path, monkeypatch):
    """(Simulated: mounting a read-only file system needs privileges; the real check was done by hand.)"""
    from robust_api.query_logs import opening

    path = tmp_path / "log.sqlite3"
    writer = SQLiteQueryLog(path)
    writer.begin_call(_header("r1"))
    writer.close()
    listing = sorted(os.listdir(tmp_path))
    monkeypatch.setattr(opening, "_on_read_only_file_system", lambda folder: True)
    with robust_api.open_log(path) as log:
        assert log.run_ids() == ["r1"]
    assert sorted(os.listdir(tmp_path)) == listing  # immutable=1: no -wal/-shm created


def test_creation_without_hard_links_falls_back_to_an_exclusive_copy(tmp_path, monkeypatch):
    import errno

    def no_links(*args, **kwargs):
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    path = tmp_path / "new" / "log.sqlite3"
    log = SQLiteQueryLog(path)
    log.begin_call(_header("r1"))
    log.close()
    with robust_api.open_log(path) as reader:
        assert reader.run_ids() == ["r1"]
    assert sorted(name for name in os.listdir(path.parent) if not name.startswith("log.sqlite3")) == []
