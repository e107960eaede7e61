"""The query log: crash safety, cross-process reading, exchange formats, integrity, resume,
and online == offline."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from robust_api import (
    ABSTAIN,
    CallLog,
    LogIntegrityError,
    NotAQueryLogError,
    QueryRecord,
    RobustAPI,
    export_jsonl,
    export_parquet,
    open_log,
)
from robust_api.query_logs import MemoryQueryLog, SQLiteQueryLog, import_jsonl

from doubles import Counting, halfspace_label

REPO = Path(__file__).resolve().parents[2]
SIGMA = 0.25




def make_image(level: int = 50) -> np.ndarray:
    """8x8 uint8 image: pixel [0, 0] is level/255, so P("A") = Phi((0.5 - level/255) / 0.25)."""
    image = np.tile(np.array([level, 200], np.uint8), 32).reshape(8, 8)
    return image


def cert_key(cert):
    return (cert.label, cert.radius, cert.p_lower, cert.counts, cert.selection_counts, cert.n0, cert.n, cert.errors)


OFFLINE = RobustAPI("local", online=False)


# -- (a) crash safety ------------------------------------------------------------------------

CHILD = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    from robust_api import RobustAPI

    def slow(batch):
        time.sleep(0.02)
        return ["A" if float(x[0, 0, 0]) < 0.5 else "B" for x in batch]

    image = np.tile(np.array([50, 200], np.uint8), 32).reshape(8, 8)
    api = RobustAPI(slow, log=sys.argv[1], seed=11, batch_size=5, name="crash-test-provider")
    print("started", flush=True)
    api.certify(image, noise_sd=0.25, N0=5, N=2000)
    print("finished", flush=True)
    """
)


def _count_rows(path: Path) -> int:
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1.0)
        try:
            return conn.execute("SELECT COUNT(*) FROM queries").fetchone()[0]
        finally:
            conn.close()
    except sqlite3.Error:
        return 0


def test_sigkill_mid_run_keeps_a_consistent_resumable_log(tmp_path):
    log_path = tmp_path / "crash.sqlite3"
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(log_path)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        rows = 0
        while time.monotonic() < deadline and child.poll() is None:
            if log_path.exists():
                rows = _count_rows(log_path)
                if rows >= 110:
                    break
            time.sleep(0.02)
        assert child.poll() is None, f"child ended early: {child.communicate()}"
        assert rows >= 110
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=10)
    finally:
        if child.poll() is None:
            os.kill(child.pid, signal.SIGKILL)
            child.wait(timeout=10)
    assert child.returncode == -signal.SIGKILL
    out, _ = child.communicate()
    assert "started" in out and "finished" not in out

    log = open_log(log_path)
    calls = list(log)
    assert len(calls) == 1
    call = calls[0]
    assert call.status == "running"  # never finished
    assert call.header.kind == "certify" and call.header.seed == 11 and call.header.noise_sd == SIGMA
    for record in call:
        assert record.phase in ("selection", "estimation")
        assert isinstance(record.sample_index, int) and record.sample_index >= 0
        assert record.label in ("A", "B") and record.raw == record.label
        assert record.error is None and record.reused is False
    selection = call.phase_records("selection")  # raises on any duplicate or gap
    estimation = call.phase_records("estimation")
    assert [r.sample_index for r in selection] == list(range(5))
    k = len(estimation)
    assert [r.sample_index for r in estimation] == list(range(k))
    assert k >= 100 and len(call) == 5 + k
    assert k < 2000  # it really was interrupted
    # whole batches only: each committed transaction is one batch of 5
    assert k % 5 == 0

    partial = OFFLINE.certify(call, N=k)
    assert partial.n == k and partial.n0 == 5 and sum(partial.counts.values()) == k
    assert partial.counts == dict(Counter(r.label for r in estimation).most_common())
    log.close()

    # resume in this process: only the missing queries are sent
    provider = Counting()
    api = RobustAPI(provider, log=log_path, seed=11, batch_size=100, name="crash-test-provider")
    resumed = api.certify(make_image(), noise_sd=SIGMA, N0=5, N=2000)
    assert provider.images == 2005 - len(call)
    assert resumed.queries == 2005 - len(call)
    assert sum(resumed.counts.values()) == 2000 and resumed.errors == 0

    fresh = RobustAPI(Counting(), log=tmp_path / "fresh.sqlite3", seed=11, name="crash-test-provider").certify(
        make_image(), noise_sd=SIGMA, N0=5, N=2000
    )
    assert cert_key(resumed) == cert_key(fresh)
    assert resumed.label == "A" and resumed.radius > 0

    after = list(open_log(log_path))
    assert [c.status for c in after] == ["running", "complete"]
    assert sum(r.reused for r in after[1]) == len(call)


# -- (b) another process reads the log -------------------------------------------------------

READER = textwrap.dedent(
    """
    import json, sys
    from robust_api import RobustAPI, ABSTAIN, open_log

    out = []
    offline = RobustAPI("local", online=False)
    for call in open_log(sys.argv[1]):
        item = [call.header.kind, call.header.run_id, len(call.records)]
        if call.header.kind == "certify":
            cert = offline.certify(call)
            item += [None if cert.label is ABSTAIN else cert.label, cert.radius]
        out.append(item)
    print(json.dumps(out))
    """
)


def test_open_log_from_a_second_process(tmp_path):
    log_path = tmp_path / "shared.sqlite3"
    api = RobustAPI(Counting(), log=log_path, seed=5)
    pred = api.predict(make_image(), N=30, noise_sd=SIGMA)
    cert1 = api.certify(make_image(), noise_sd=SIGMA, N0=10, N=60)
    cert2 = api.certify(make_image(120), noise_sd=0.5, N0=5, N=40, seed=6)
    # the writer keeps its connection open while the other process reads
    result = subprocess.run(
        [sys.executable, "-c", READER, str(log_path)], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    expected = [
        ["predict", pred.logs.header.run_id, 30],
        ["certify", cert1.logs.header.run_id, 70, cert1.label, cert1.radius],
        ["certify", cert2.logs.header.run_id, 45, None, cert2.radius],  # ABSTAIN prints as null
    ]
    assert seen == expected
    assert isinstance(cert1.label, str) and cert1.radius > 0  # one certified ...
    assert cert2.label is ABSTAIN and cert2.radius == 0.0  # ... and one abstaining call


# -- (c) export / import ---------------------------------------------------------------------


def _build_varied_log(path: Path) -> SQLiteQueryLog:
    """A log with predict (noisy and clean), certify, a resumed certify, a denoised call and a failed call."""
    raw_provider = lambda batch: [{"label": halfspace_label(x), "score": 0.75, "extra": [1, 2]} for x in batch]  # noqa: E731
    api = RobustAPI(raw_provider, log=path, seed=1, name="raw-provider", label_fn=lambda r: r["label"],
                    cost_per_query_usd=0.002)
    api.predict(make_image(), N=25, noise_sd=SIGMA)
    api.predict(make_image(), N=2, noise_sd=0)
    api.certify(make_image(), noise_sd=SIGMA, N0=10, N=50)
    api.certify(make_image(), noise_sd=SIGMA, N0=10, N=60)  # reuses 60 records
    RobustAPI(Counting(), denoiser=lambda x: x * 0.5, log=path, seed=2**62).certify(
        make_image(90), noise_sd=0.5, N0=5, N=20
    )

    calls = {"n": 0}

    def flaky(batch):
        calls["n"] += 1
        return [3] * len(batch) if calls["n"] == 2 else [halfspace_label(x) for x in batch]

    with pytest.raises(Exception):
        RobustAPI(flaky, log=path, seed=4, batch_size=5, name="flaky").certify(make_image(), noise_sd=SIGMA, N0=5, N=10)
    return SQLiteQueryLog(path)


def _assert_same_calls(original, imported):
    original, imported = list(original), list(imported)
    assert len(original) == len(imported) == 6
    for a, b in zip(original, imported):
        assert a.header == b.header
        assert a.status == b.status
        assert a.records == b.records
    assert [c.status for c in imported] == ["complete"] * 5 + ["failed"]
    for a, b in zip(original, imported):
        if a.header.kind == "certify" and a.status == "complete":
            assert cert_key(OFFLINE.certify(a)) == cert_key(OFFLINE.certify(b))
            assert cert_key(OFFLINE.certify(a, alpha=0.05, N=7)) == cert_key(OFFLINE.certify(b, alpha=0.05, N=7))
        if a.header.kind == "predict":
            pa, pb = OFFLINE.predict(a), OFFLINE.predict(b)
            assert (pa.label, pa.counts, pa.p_value, pa.n) == (pb.label, pb.counts, pb.p_value, pb.n)


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_export_import_round_trip(fmt, tmp_path):
    if fmt == "parquet":
        pytest.importorskip("pyarrow")
    log = _build_varied_log(tmp_path / "log.sqlite3")
    out = tmp_path / f"export.{fmt}"
    count = (export_jsonl if fmt == "jsonl" else export_parquet)(log, out)
    assert count == 6
    imported = open_log(out)
    assert isinstance(imported, MemoryQueryLog)
    _assert_same_calls(log, imported)
    # the details survive: raw dicts, reused flags, costs, error records, huge seeds, denoiser ids
    calls = list(imported)
    assert calls[0].records[0].raw == {"label": calls[0].records[0].label, "score": 0.75, "extra": [1, 2]}
    assert calls[0].records[0].cost_usd == 0.002
    assert calls[1].header.noise_sd == 0 and {r.phase for r in calls[1]} == {"clean"}
    assert sum(r.reused for r in calls[3]) == 60 and all(r.cost_usd == 0 for r in calls[3] if r.reused)
    assert calls[4].header.seed == 2**62 and calls[4].header.denoiser_id.startswith("callable:")
    failed = [r for r in calls[5] if r.error is not None]
    assert len(failed) == 5 and all(r.label is None and r.raw == 3 for r in failed)


def test_jsonl_layout_and_reexport_is_identical(tmp_path):
    log = _build_varied_log(tmp_path / "log.sqlite3")
    first = tmp_path / "a.jsonl"
    export_jsonl(log, first)
    lines = first.read_text(encoding="utf-8").splitlines()
    header = json.loads(lines[0])
    assert header == {"type": "header", "format": "robust_api.query_log", "format_version": 1}
    items = [json.loads(line) for line in lines[1:]]
    assert [i["type"] for i in items].count("call") == 6
    assert [i["type"] for i in items].count("query") == sum(len(c) for c in log)
    second = tmp_path / "b.jsonl"
    export_jsonl(open_log(first), second)
    assert second.read_bytes() == first.read_bytes()


@pytest.mark.parametrize(
    "first_line",
    ["garbage\n", "\n", "[1, 2, 3]\n", '{"type": "header", "format": "something.else", "format_version": 1}\n', ""],
    ids=["garbage", "blank", "list", "other_format", "empty_file"],
)
def test_jsonl_with_bad_first_line_is_not_a_log(first_line, tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(first_line + '{"type": "call"}\n', encoding="utf-8") if first_line else path.write_text("")
    for opener in (open_log, import_jsonl):
        with pytest.raises(NotAQueryLogError) as excinfo:
            opener(path)
        assert "not a robust_api JSONL query log" in str(excinfo.value)


def test_jsonl_from_newer_format_and_malformed_lines(tmp_path):
    newer = tmp_path / "newer.jsonl"
    newer.write_text(json.dumps({"type": "header", "format": "robust_api.query_log", "format_version": 99}) + "\n")
    with pytest.raises(NotAQueryLogError, match="format_version 99"):
        open_log(newer)
    broken = tmp_path / "broken.jsonl"
    broken.write_text(
        json.dumps({"type": "header", "format": "robust_api.query_log", "format_version": 1}) + "\n{not json\n"
    )
    with pytest.raises(NotAQueryLogError, match=r"broken.jsonl:2: malformed"):
        open_log(broken)


def test_parquet_that_is_not_a_log(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    other = tmp_path / "other.parquet"
    pq.write_table(pa.table({"x": [1, 2]}), other)
    with pytest.raises(NotAQueryLogError, match="not a robust_api Parquet query log"):
        open_log(other)
    garbage = tmp_path / "garbage.parquet"
    garbage.write_text("nope")
    with pytest.raises(NotAQueryLogError, match="not a readable Parquet file"):
        open_log(garbage)
    newer = tmp_path / "newer.parquet"
    pq.write_table(pa.table({"x": [1]}).replace_schema_metadata(
        {"format": "robust_api.query_log", "format_version": "99"}), newer)
    with pytest.raises(NotAQueryLogError, match="format_version 99"):
        open_log(newer)


def test_open_log_on_missing_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="no query log"):
        open_log(tmp_path / "missing.sqlite3")
    with pytest.raises(FileNotFoundError):
        open_log(tmp_path)  # a folder without queries.sqlite3


# -- (d) one record per (phase, sample index) ------------------------------------------------


@pytest.mark.parametrize("store", ["sqlite", "memory"])
def test_duplicate_record_is_refused_by_the_store(store, tmp_path):
    if store == "sqlite":
        api = RobustAPI(Counting(), log=tmp_path / "log.sqlite3", seed=0)
    else:
        api = RobustAPI(Counting(), log=False, seed=0)
    cert = api.certify(make_image(), noise_sd=SIGMA, N0=3, N=5)
    run_id = cert.logs.header.run_id
    target = SQLiteQueryLog(tmp_path / "log.sqlite3") if store == "sqlite" else api.log
    duplicate = QueryRecord("estimation", 2, "B", "B", 0.0, 0.0, time.time())
    with pytest.raises(LogIntegrityError) as excinfo:
        target.append(run_id, [duplicate])
    assert isinstance(excinfo.value, ValueError)
    assert "estimation" in str(excinfo.value) or "recorded twice" in str(excinfo.value)
    # a batch holding a duplicate is refused as a whole (nothing of it is written)
    with pytest.raises(LogIntegrityError):
        target.append(run_id, [QueryRecord("estimation", 5, "A", "A", 0.0, 0.0, 0.0),
                               QueryRecord("estimation", 5, "A", "A", 0.0, 0.0, 0.0)])
    reloaded = target.load_call(run_id)
    assert reloaded.records == cert.logs.records
    # a new index is fine
    target.append(run_id, [QueryRecord("estimation", 5, "A", "A", 0.0, 0.0, 0.0)])
    assert len(target.load_call(run_id)) == 9


def test_call_log_with_duplicate_indices_cannot_be_certified():
    cert = RobustAPI(Counting(), log=False, seed=0).certify(make_image(), noise_sd=SIGMA, N0=3, N=20)
    records = list(cert.logs.records)
    extra = [r for r in records if r.phase == "estimation" and r.sample_index == 4]
    tampered = cert.logs.with_records(records + extra)
    assert isinstance(tampered, CallLog) and len(tampered) == len(cert.logs) + 1
    with pytest.raises(LogIntegrityError, match="duplicate record near estimation sample"):
        OFFLINE.certify(tampered)
    with pytest.raises(LogIntegrityError):
        OFFLINE.predict(tampered)
    with pytest.raises(LogIntegrityError):
        tampered.phase_records("estimation")
    # duplicates in selection too
    sel = [r for r in records if r.phase == "selection"]
    with pytest.raises(LogIntegrityError, match="selection"):
        OFFLINE.certify(cert.logs.with_records(records + sel[:1]))


# -- (e) resume ------------------------------------------------------------------------------


def test_same_image_seed_and_log_is_free_the_second_time(tmp_path):
    log_path = tmp_path / "log.sqlite3"
    provider = Counting()
    api = RobustAPI(provider, log=log_path, seed=42, cost_per_query_usd=0.01)
    first = api.certify(make_image(), noise_sd=SIGMA, N0=10, N=50)
    assert provider.images == 60 and first.queries == 60
    assert all(r.cost_usd == 0.01 and not r.reused for r in first.logs)
    second = RobustAPI(provider, log=log_path, seed=42, cost_per_query_usd=0.01).certify(
        make_image(), noise_sd=SIGMA, N0=10, N=50
    )
    assert provider.images == 60 and second.queries == 0
    assert len(second.logs) == 60
    assert all(r.reused and r.cost_usd == 0.0 for r in second.logs)
    assert cert_key(first) == cert_key(second)
    assert second.logs.header.run_id != first.logs.header.run_id
    # the labels of the reused records are the original answers, index by index
    for phase in ("selection", "estimation"):
        assert [r.label for r in second.logs.phase_records(phase)] == [r.label for r in first.logs.phase_records(phase)]
    # and the stored log says so too
    stored = list(open_log(log_path))
    assert [sum(r.reused for r in c) for c in stored] == [0, 60]


def test_resume_also_for_predict_and_partial_overlap(tmp_path):
    provider = Counting()
    api = RobustAPI(provider, log=tmp_path / "log.sqlite3", seed=9)
    api.predict(make_image(), N=30, noise_sd=SIGMA)
    assert provider.images == 30
    more = api.predict(make_image(), N=50, noise_sd=SIGMA)
    assert provider.images == 50 and more.queries == 20
    assert [r.reused for r in sorted(more.logs, key=lambda r: r.sample_index)] == [True] * 30 + [False] * 20


@pytest.mark.parametrize(
    "change",
    [{"seed": 43}, {"noise_sd": 0.5}, {"image": 60}, {"name": "other-provider"}],
    ids=["seed", "noise_sd", "image", "provider"],
)
def test_anything_else_different_queries_everything(change, tmp_path):
    log_path = tmp_path / "log.sqlite3"
    provider = Counting()
    RobustAPI(provider, log=log_path, seed=42, name="p").certify(make_image(), noise_sd=SIGMA, N0=10, N=50)
    assert provider.images == 60
    api = RobustAPI(provider, log=log_path, seed=change.get("seed", 42), name=change.get("name", "p"))
    again = api.certify(make_image(change.get("image", 50)), noise_sd=change.get("noise_sd", SIGMA), N0=10, N=50)
    assert provider.images == 120 and again.queries == 60
    assert not any(r.reused for r in again.logs)


def test_seed_none_draws_a_fresh_seed_each_call(tmp_path):
    log_path = tmp_path / "log.sqlite3"
    provider = Counting()
    api = RobustAPI(provider, log=log_path)
    a = api.certify(make_image(), noise_sd=SIGMA, N0=5, N=20)
    b = api.certify(make_image(), noise_sd=SIGMA, N0=5, N=20)
    assert provider.images == 50 and a.queries == b.queries == 25
    assert a.logs.header.seed != b.logs.header.seed
    assert all(0 <= s < 2**63 for s in (a.logs.header.seed, b.logs.header.seed))
    assert not any(r.reused for r in b.logs)
    assert [c.header.seed for c in open_log(log_path)] == [a.logs.header.seed, b.logs.header.seed]


# -- (f) online == offline -------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 2**63 - 1])
def test_online_equals_offline(seed, tmp_path):
    log_path = tmp_path / "log.sqlite3"
    image = make_image(70)  # P("A") = Phi(0.9) ~ 0.82: certifies, with votes for both labels
    online = RobustAPI(Counting(), log=log_path, seed=seed).certify(image, noise_sd=SIGMA, N0=20, N=200, alpha=0.001)
    assert online.offline is False and len(tuple(online)) == 3
    assert online.label == "A" and online.radius > 0  # a real certificate, so the comparisons below bite
    from_result = OFFLINE.certify(online.logs)
    assert from_result.offline is True and len(tuple(from_result)) == 2
    reread = next(iter(open_log(log_path)))
    from_disk = OFFLINE.certify(reread, alpha=0.001)
    assert cert_key(online) == cert_key(from_result) == cert_key(from_disk)
    assert from_result.queries == 0

    larger_alpha = OFFLINE.certify(online.logs, alpha=0.05)
    assert larger_alpha.p_lower >= online.p_lower
    assert larger_alpha.radius >= online.radius

    fewer = OFFLINE.certify(reread, N=50)
    first_50 = reread.phase_records("estimation")[:50]
    assert fewer.n == 50
    assert fewer.counts == dict(Counter(r.label for r in first_50).most_common())
    assert fewer.selection_counts == online.selection_counts
    fewer_n0 = OFFLINE.certify(reread, N0=3)
    assert fewer_n0.selection_counts == dict(Counter(r.label for r in reread.phase_records("selection")[:3]))
    assert fewer_n0.counts == online.counts


def test_online_predict_equals_offline(tmp_path):
    log_path = tmp_path / "log.sqlite3"
    pred = RobustAPI(Counting(), log=log_path, seed=8).predict(make_image(), N=100, noise_sd=SIGMA, alpha=0.01)
    again = OFFLINE.predict(next(iter(open_log(log_path))), alpha=0.01)
    assert (pred.label, pred.counts, pred.p_value, pred.n) == (again.label, again.counts, again.p_value, again.n)
    assert sum(pred.counts.values()) == 100


# -- (g) default location --------------------------------------------------------------------


def test_default_log_location(tmp_path, monkeypatch, robust_api_home):
    """The default log lives in the user's data directory ($ROBUST_API_HOME here, which
    tests/conftest.py points at a temporary folder), not in the working directory."""
    monkeypatch.chdir(tmp_path)
    api = RobustAPI(Counting(), seed=0)
    cert = api.certify(make_image(), noise_sd=SIGMA, N0=2, N=3)
    expected = robust_api_home / "query_logs" / "queries.sqlite3"
    assert expected.is_file()
    assert Path(api.log.path).resolve() == expected.resolve()
    assert not (tmp_path / "query_logs").exists()
    stored = list(open_log(robust_api_home / "query_logs"))  # a folder opens its queries.sqlite3
    assert [c.header.run_id for c in stored] == [cert.logs.header.run_id]


def test_log_given_as_folder(tmp_path):
    folder = tmp_path / "runs"
    RobustAPI(Counting(), log=folder, seed=0).certify(make_image(), noise_sd=SIGMA, N0=2, N=3)
    assert (folder / "queries.sqlite3").is_file()
    assert len(open_log(folder)) == 1
