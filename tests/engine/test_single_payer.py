"""One payer per query: calls on the same image, seed, noise and model that run at the same time —
in two threads or two processes writing one log — pay for each noisy sample once.

The providers here make the calls overlap for certain, not by timing: the first request of a
call waits until the other call has begun (its header is in the log). Without the source lock
both calls would then send every sample; with it the second call waits at the lock and reuses
the first one's answers. Which call pays is left to the scheduler: the checks hold either way.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

from robust_api import RobustAPI
from robust_api.query_logs import locks
from robust_api.query_logs.records import CallHeader

N0, N = 10, 50
SAFETY_WAIT_S = 120  # only bounds a wait for a partner that died; no check depends on it


def _image(seed: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 1, (8, 8, 1)).astype(np.float32)


def _label(x: np.ndarray) -> str:
    """A deterministic answer per noisy image, mostly "cat" (so certificates are not abstentions)."""
    return "cat" if hashlib.sha256(x.tobytes()).digest()[0] < 220 else "dog"


class _Rendezvous:
    """A callable provider whose first request waits until ``calls`` calls have begun in ``log``;
    it counts every image it answers (what was paid for)."""

    def __init__(self, calls: int):
        self.calls = calls
        self.log = None
        self.sent = 0
        self.waited = False
        self._lock = threading.Lock()

    def __call__(self, batch):
        with self._lock:
            first, self.waited = not self.waited, True
        if first:
            deadline = time.monotonic() + SAFETY_WAIT_S
            while len(self.log) < self.calls and time.monotonic() < deadline:
                time.sleep(0.005)
        with self._lock:
            self.sent += len(batch)
        return [_label(x) for x in batch]


def _same(a, b):
    return (a.label, a.radius, a.p_lower, a.counts, a.selection_counts) == (
        b.label, b.radius, b.p_lower, b.counts, b.selection_counts)


@pytest.mark.parametrize("store", ["sqlite", "memory"])
def test_two_threads_on_the_same_image_pay_once(tmp_path, store):
    provider = _Rendezvous(calls=2)
    api = RobustAPI(provider, name="test:rendezvous", log=tmp_path / "q.sqlite3" if store == "sqlite" else False,
                    seed=7, batch_size=8, progress=False)
    provider.log = api.log
    image = _image()
    first, second = api.certify_many([image, image], noise_sd=0.25, N0=N0, N=N, parallel=2)
    assert provider.sent == N0 + N  # one payer: the other call reused every answer
    assert first.queries + second.queries == N0 + N
    assert api.spent.queries == N0 + N
    assert _same(first, second) and first.label == "cat"
    api.close()


_WORKER = textwrap.dedent(
    """
    import hashlib, json, sqlite3, sys, time
    import numpy as np
    from robust_api import RobustAPI

    log, counter, rounds, N0, N, wait_s = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), float(sys.argv[6])
    state = {"round": 0, "waited": -1}

    def calls_begun():
        conn = sqlite3.connect(f"file:{log}?mode=ro", uri=True)
        try:
            return conn.execute("SELECT COUNT(*) FROM calls").fetchone()[0]
        finally:
            conn.close()

    def classify(batch):
        r = state["round"]
        if state["waited"] != r:  # the first request of each round waits for the other process's call
            state["waited"] = r
            deadline = time.monotonic() + wait_s
            while calls_begun() < 2 * (r + 1) and time.monotonic() < deadline:
                time.sleep(0.005)
        with open(counter, "a") as out:
            out.write(f"{r} {len(batch)}\\n")
        return ["cat" if hashlib.sha256(x.tobytes()).digest()[0] < 220 else "dog" for x in batch]

    image = np.random.default_rng(3).uniform(0, 1, (8, 8, 1)).astype(np.float32)
    api = RobustAPI(classify, name="test:two-processes", log=log, batch_size=8, progress=False)
    results = []
    for r in range(rounds):
        state["round"] = r
        cert = api.certify(image, noise_sd=0.25, N0=N0, N=N, seed=100 + r)
        results.append({"label": cert.label, "radius": cert.radius, "p_lower": cert.p_lower,
                        "counts": cert.counts, "queries": cert.queries})
    api.close()
    print(json.dumps({"results": results, "spent": api.spent.queries}))
    """
)


def test_two_processes_on_the_same_image_pay_once(tmp_path):
    rounds = 3
    worker = tmp_path / "worker.py"
    worker.write_text(_WORKER)
    log = tmp_path / "shared.sqlite3"
    RobustAPI(_label, name="test:two-processes", log=log, progress=False).close()  # the log exists before both start
    counters = [tmp_path / f"sent-{i}.txt" for i in range(2)]
    processes = [
        subprocess.Popen([sys.executable, str(worker), str(log), str(counter), str(rounds), str(N0), str(N),
                          str(SAFETY_WAIT_S)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for counter in counters
    ]
    outputs = []
    try:
        for process in processes:
            out, err = process.communicate(timeout=600)
            assert process.returncode == 0, err
            outputs.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    sent = {r: 0 for r in range(rounds)}
    for counter in counters:
        if counter.exists():
            for line in counter.read_text().splitlines():
                r, images = map(int, line.split())
                sent[r] += images
    assert sent == {r: N0 + N for r in range(rounds)}  # each round paid once, by whichever process
    assert sum(o["spent"] for o in outputs) == rounds * (N0 + N)
    for r in range(rounds):
        a, b = (o["results"][r] for o in outputs)
        assert a["queries"] + b["queries"] == N0 + N
        assert {k: v for k, v in a.items() if k != "queries"} == {k: v for k, v in b.items() if k != "queries"}
        assert a["label"] == "cat"
    assert (tmp_path / "shared.sqlite3.lock").is_file()  # the side file stays (never deleted)


def _header(seed: int = 0) -> CallHeader:
    return CallHeader("r", "certify", "d" * 64, (8, 8, 1), "test:p", None, None, None, 0.25, seed)


def _free(lock_file, offset) -> bool:
    """True when no other process holds byte ``offset`` of ``lock_file``."""
    import fcntl

    fd = os.open(lock_file, os.O_RDWR)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, offset)
        fcntl.lockf(fd, fcntl.LOCK_UN, 1, offset)
        return True
    except OSError as exc:
        assert exc.errno in (errno.EACCES, errno.EAGAIN)
        return False
    finally:
        os.close(fd)


@pytest.mark.skipif(locks.fcntl is None, reason="POSIX record locks only")
def test_a_payer_killed_with_sigkill_leaves_no_lock_behind(tmp_path):
    log = tmp_path / "q.sqlite3"
    ready = tmp_path / "ready"
    holder = textwrap.dedent(
        f"""
        import time
        from pathlib import Path
        from robust_api.query_logs import locks
        from robust_api.query_logs.records import CallHeader
        header = CallHeader("r", "certify", "d" * 64, (8, 8, 1), "test:p", None, None, None, 0.25, 0)
        with locks.file_source_lock({str(log)!r}, header, "estimation"):
            Path({str(ready)!r}).write_text("held")
            time.sleep(3600)
        """
    )
    process = subprocess.Popen([sys.executable, "-c", holder])
    try:
        deadline = time.monotonic() + SAFETY_WAIT_S
        while not ready.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert ready.exists(), "the holder never took the lock"
        lock_file = os.path.realpath(log) + ".lock"
        offset = locks.lock_offset(locks.source_key(_header(), "estimation"))
        assert not _free(lock_file, offset)  # held by the other process
        assert _free(lock_file, locks.lock_offset(locks.source_key(_header(), "selection")))  # one byte per key
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert _free(lock_file, offset)  # the OS released it with the process
    with locks.file_source_lock(log, _header(), "estimation"):  # and a later payer takes it at once
        assert os.path.isfile(lock_file)


@pytest.mark.skipif(locks.fcntl is None, reason="POSIX record locks only")
def test_a_refused_wait_edeadlk_is_retried(tmp_path, monkeypatch):
    """The kernel's deadlock detector counts processes, not threads: a refused wait is retried."""
    real = locks.fcntl.lockf
    answers = [OSError(errno.EAGAIN, "busy"), OSError(errno.EDEADLK, "deadlock"), OSError(errno.EDEADLK, "deadlock")]
    calls = []

    def lockf(fd, cmd, *args):
        calls.append(cmd)
        if cmd != locks.fcntl.LOCK_UN and answers:
            raise answers.pop(0)
        return real(fd, cmd, *args)

    monkeypatch.setattr(locks.fcntl, "lockf", lockf)
    with locks.file_source_lock(tmp_path / "q.sqlite3", _header(), "selection"):
        pass
    assert calls.count(locks.fcntl.LOCK_EX) == 3 and calls[-1] == locks.fcntl.LOCK_UN


def test_an_unusable_lock_file_warns_and_still_certifies(tmp_path, caplog):
    log = tmp_path / "q.sqlite3"
    (tmp_path / "q.sqlite3.lock").mkdir()  # something that is not a lock file
    provider = _Rendezvous(calls=1)
    api = RobustAPI(provider, name="test:rendezvous", log=log, seed=1, progress=False)
    provider.log = api.log
    with caplog.at_level(logging.WARNING, logger="robust_api.query_logs.locks"):
        cert = api.certify(_image(), noise_sd=0.25, N0=N0, N=N)
    assert cert.queries == N0 + N and provider.sent == N0 + N
    if locks.fcntl is not None:
        assert "may each pay for the same queries" in caplog.text
    again = api.certify(_image(), noise_sd=0.25, N0=N0, N=N)  # the in-process path still reuses
    assert again.queries == 0 and _same(again, cert)
    api.close()


def test_threads_on_different_sources_do_not_wait_for_each_other(tmp_path):
    """Two sources hold their locks at the same time (no global lock): each thread waits inside
    its lock until the other one is inside its own."""
    inside = threading.Barrier(2, timeout=SAFETY_WAIT_S)
    errors = []

    def hold(seed):
        try:
            with locks.file_source_lock(tmp_path / "q.sqlite3", _header(seed), "estimation"):
                inside.wait()
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=hold, args=(seed,)) for seed in (1, 2)]
    if locks.lock_offset(locks.source_key(_header(1), "estimation")) == locks.lock_offset(
            locks.source_key(_header(2), "estimation")):
        pytest.skip("the two keys share a lock byte")
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors


_PAYER = textwrap.dedent(
    """
    import hashlib, json, sys, threading
    import numpy as np
    from robust_api import RobustAPI

    log, counter, block_at = sys.argv[1], sys.argv[2], int(sys.argv[3])
    calls = [0]

    def classify(batch):
        calls[0] += 1
        if calls[0] == block_at:  # hang inside a paid request, holding the source lock
            threading.Event().wait()
        with open(counter, "a") as out:
            out.write(f"{len(batch)}\\n")
        return ["cat" if hashlib.sha256(x.tobytes()).digest()[0] < 220 else "dog" for x in batch]

    image = np.random.default_rng(3).uniform(0, 1, (8, 8, 1)).astype(np.float32)
    api = RobustAPI(classify, name="test:payer", log=log, batch_size=8, progress=False)
    cert = api.certify(image, noise_sd=0.25, N0=16, N=48, seed=11)
    print(json.dumps({"label": cert.label, "radius": cert.radius, "p_lower": cert.p_lower, "queries": cert.queries}))
    """
)


def _sent(counter) -> int:
    return sum(int(line) for line in counter.read_text().split()) if counter.exists() else 0


def test_a_waiting_process_takes_over_when_the_payer_is_killed(tmp_path):
    """Process A pays for the selection and one estimation batch, then hangs inside a request
    while holding the estimation lock; process B certifies the same image. A is killed with
    SIGKILL: B is not blocked by the dead payer, reuses the 24 answers A committed and pays
    only for the other 40; its certificate is the one an uninterrupted run gives."""
    import sqlite3

    log = tmp_path / "shared.sqlite3"
    RobustAPI(_label, name="test:payer", log=log, progress=False).close()
    worker = tmp_path / "payer.py"
    worker.write_text(_PAYER)
    counters = {name: tmp_path / f"sent-{name}.txt" for name in "AB"}

    def start(name, block_at):
        return subprocess.Popen([sys.executable, str(worker), str(log), str(counters[name]), str(block_at)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def logged():
        with sqlite3.connect(f"file:{log}?mode=ro", uri=True) as conn:
            return conn.execute("SELECT c.call_id, COUNT(q.id) FROM calls c LEFT JOIN queries q "
                                "ON q.call_id = c.call_id GROUP BY c.call_id ORDER BY c.call_id").fetchall()

    def wait_for(condition, *processes):
        deadline = time.monotonic() + SAFETY_WAIT_S
        while not condition() and time.monotonic() < deadline:
            for process in processes:
                if process.poll() is not None:
                    pytest.fail(f"a worker exited early ({process.returncode}): {process.stderr.read()}")
            time.sleep(0.01)
        assert condition(), logged()

    payer = start("A", block_at=4)  # 2 selection batches and 1 estimation batch are paid, the 4th hangs
    waiter = None
    try:
        wait_for(lambda: [count for _, count in logged()] == [24], payer)
        waiter = start("B", block_at=0)
        # B reused the selection and waits for A's estimation lock
        wait_for(lambda: [count for _, count in logged()] == [24, 16], payer, waiter)
        payer.kill()  # SIGKILL
        payer.wait()
        out, err = waiter.communicate(timeout=600)
        assert waiter.returncode == 0, err
    finally:
        for process in (payer, waiter):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait()
    result = json.loads(out.strip().splitlines()[-1])
    assert _sent(counters["A"]) == 24 and _sent(counters["B"]) == 40 and result["queries"] == 40
    reference = RobustAPI(lambda batch: [_label(x) for x in batch], name="test:payer", log=False, seed=11,
                          batch_size=8, progress=False).certify(_image(), noise_sd=0.25, N0=16, N=48)
    assert (result["label"], result["radius"], result["p_lower"]) == (
        reference.label, reference.radius, reference.p_lower)
