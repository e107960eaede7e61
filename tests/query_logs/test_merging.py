"""Merging query logs (robust_api.query_logs.merging, ``robust-api merge-logs``): shards into one
log with the same certificates, idempotency, growing copies, refused conflicts (nothing
written), mixed experiments, and the command line's exit statuses.

Every log is filled by real calls of a callable provider on small NumPy images (torch-free)."""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest

import robust_api
from doubles import Counting
from robust_api.commands.cli import main
from robust_api.errors import InvalidParameterError, LogConflictError, MixedExperimentsError
from robust_api.query_logs import (
    MemoryQueryLog, MergeReport, SQLiteQueryLog, export_jsonl, merge_calls, merge_logs, open_log, open_store,
)
from robust_api.query_logs.merging import experiment_of

SIGMA = 0.25
OFFLINE = robust_api.RobustAPI("x", online=False)


def image(level: int) -> np.ndarray:
    """8x8 uint8 image whose pixel [0, 0] is level/255 (the half-space classifier's input)."""
    return np.tile(np.array([level, 200], np.uint8), 32).reshape(8, 8)


def make_shard(path: Path, levels=(50,), *, seed: int = 3, noise_sd: float = SIGMA, name: str = "test-provider",
               model_version=None, clean: bool = True) -> Path:
    """A log holding, per image, one certify call (and its clean-label predict call)."""
    provider = robust_api.CallableProvider(Counting(), name=name, model_version=model_version)
    with robust_api.RobustAPI(provider, log=path, seed=seed) as api:
        for level in levels:
            api.certify(image(level), noise_sd=noise_sd, N0=5, N=30, name=f"img-{level}.png")
            if clean:
                api.predict(image(level), N=1, noise_sd=0)
    return path


def calls_of(path) -> list:
    with open_log(path) as log:
        return list(log)


def certificates(path) -> dict:
    """run id → the offline certificate's numbers, for every certify call of a log."""
    out = {}
    for call in calls_of(path):
        if call.kind == "certify":
            cert = OFFLINE.certify(call)
            out[call.run_id] = (cert.label, cert.radius, cert.p_lower, cert.counts, cert.selection_counts, cert.n0,
                                cert.n)
    return out


def rows(path) -> tuple[int, int]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return (conn.execute("SELECT COUNT(*) FROM calls").fetchone()[0],
                conn.execute("SELECT COUNT(*) FROM queries").fetchone()[0])
    finally:
        conn.close()


def snapshot(path) -> list:
    """Every call with its status and records (what a refused merge must leave as it was)."""
    return [(call.header, call.status, call.records) for call in calls_of(path)]


def forged_copy(path: Path, call, *, header=None, records=None, status=None) -> Path:
    """A second log holding a copy of ``call`` (edited), written through the store API."""
    with SQLiteQueryLog(path) as log:
        header = header or call.header
        log.begin_call(header)
        log.append(header.run_id, list(call.records if records is None else records))
        log.finish_call(header.run_id, call.status if status is None else status)
    return path


@pytest.fixture
def shards(tmp_path):
    return [make_shard(tmp_path / "shard-0.sqlite3", (40, 60)), make_shard(tmp_path / "shard-1.sqlite3", (70, 90))]


# -- merging shards --------------------------------------------------------------------------


def test_two_shards_merge_into_one_log_with_the_same_certificates(shards, tmp_path):
    into = tmp_path / "all.sqlite3"
    before = {**certificates(shards[0]), **certificates(shards[1])}
    report = merge_logs(shards, into)
    assert isinstance(report, MergeReport)
    assert (report.calls_added, report.calls_extended, report.calls_unchanged) == (8, 0, 0)
    assert report.sources == [str(shards[0]), str(shards[1])] and report.into == str(into)
    merged = calls_of(into)
    shard_calls = calls_of(shards[0]) + calls_of(shards[1])
    assert sorted(c.run_id for c in merged) == sorted(c.run_id for c in shard_calls)
    assert report.records_added == sum(len(c) for c in shard_calls) == rows(into)[1]
    by_id = {c.run_id: c for c in merged}
    for call in shard_calls:  # header, status and every record, raw answers included
        assert (by_id[call.run_id].header, by_id[call.run_id].status, by_id[call.run_id].records) == (
            call.header, call.status, call.records)
    assert certificates(into) == before and len(before) == 4
    # the calls come in the order they began, whatever the order of the sources
    created = [c.header.created for c in merged]
    assert created == sorted(created)
    assert "8 added" in str(report) and "into" in str(report)


def test_merging_twice_adds_nothing(shards, tmp_path):
    into = tmp_path / "all.sqlite3"
    merge_logs(shards, into)
    counted = rows(into)
    again = merge_logs(shards, into)
    assert (again.calls_added, again.calls_extended, again.calls_unchanged, again.records_added) == (0, 0, 8, 0)
    assert rows(into) == counted
    # one shard given twice, and a JSONL export of a shard, are the same calls
    export_jsonl(open_log(shards[1]), tmp_path / "shard-1.jsonl")
    third = merge_logs([shards[0], shards[0], tmp_path / "shard-1.jsonl"], into)
    assert (third.calls_unchanged, third.records_added) == (8, 0) and rows(into) == counted


def test_merge_into_a_log_that_holds_other_experiments(shards, tmp_path):
    into = make_shard(tmp_path / "main.sqlite3", (50,), seed=9, noise_sd=0.5)
    held = rows(into)
    report = merge_logs(shards, into)  # only the sources must be one experiment
    assert report.calls_added == 8 and rows(into)[0] == held[0] + 8


def test_a_grown_copy_of_a_running_call_extends_it(tmp_path):
    shard = make_shard(tmp_path / "shard.sqlite3", (50,), clean=False)
    (call,) = calls_of(shard)
    older = MemoryQueryLog()  # the call as the driver saw it while it ran: 12 of its 35 records
    older.begin_call(call.header)
    older.append(call.run_id, call.records[:12])
    target = open_store(tmp_path / "main.sqlite3")
    first = merge_calls(target, older, source="older copy")
    assert (first.calls_added, first.records_added, first.sources) == (1, 12, ["older copy"])
    assert target.load_call(call.run_id).status == "running"
    grown = merge_calls(target, [call])
    assert (grown.calls_added, grown.calls_extended, grown.records_added) == (0, 1, len(call) - 12)
    merged = target.load_call(call.run_id)
    assert merged.status == "complete" and merged.records == call.records
    # the older copy again: nothing added, and the status never moves back
    again = merge_calls(target, older)
    assert (again.calls_unchanged, again.records_added) == (1, 0)
    assert target.load_call(call.run_id).status == "complete"
    assert OFFLINE.certify(target.load_call(call.run_id)).counts == OFFLINE.certify(call).counts
    target.close()


def test_a_running_copy_and_its_finished_copy_in_one_merge(tmp_path):
    shard = make_shard(tmp_path / "shard.sqlite3", (50,), clean=False)
    (call,) = calls_of(shard)
    running = dataclasses.replace(call, records=call.records[:7], status="running")
    target = MemoryQueryLog()
    report = merge_calls(target, [running, call])
    assert (report.calls_added, report.records_added) == (1, len(call))
    assert target.load_call(call.run_id).status == "complete"


# -- conflicts: refused before anything is written ------------------------------------------------


def test_a_forged_answer_is_refused_and_the_target_is_unchanged(tmp_path):
    shard = make_shard(tmp_path / "shard.sqlite3", (50,), clean=False)
    into = tmp_path / "main.sqlite3"
    merge_logs([shard], into)
    other = make_shard(tmp_path / "other.sqlite3", (80,), clean=False)  # a call the target lacks, same batch
    (call,) = calls_of(shard)
    victim = next(r for r in call.records if r.phase == "estimation" and r.sample_index == 3)
    flipped = {"A": "B", "B": "A"}[victim.label]
    records = [dataclasses.replace(r, label=flipped, raw=flipped) if r is victim else r for r in call.records]
    forged = forged_copy(tmp_path / "forged.sqlite3", call, records=records)
    before, counted = snapshot(into), rows(into)
    with pytest.raises(LogConflictError) as caught:
        merge_logs([other, forged], into)
    message = str(caught.value)
    assert call.run_id[:12] in message and "estimation sample 3" in message
    assert repr(victim.label) in message and repr(flipped) in message
    assert "forged.sqlite3" in message and "main.sqlite3" in message and "fresh log" in message
    assert snapshot(into) == before and rows(into) == counted  # not even the other shard's call


def test_conflicting_copies_among_the_sources_do_not_create_the_target(tmp_path):
    shard = make_shard(tmp_path / "shard.sqlite3", (50,), clean=False)
    (call,) = calls_of(shard)
    records = [dataclasses.replace(r, cost_usd=0.5) if r.sample_index == 0 and r.phase == "selection" else r
               for r in call.records]
    forged = forged_copy(tmp_path / "forged.sqlite3", call, records=records)
    with pytest.raises(LogConflictError, match=r"selection sample 0 has cost_usd=0\.5"):
        merge_logs([shard, forged], tmp_path / "new.sqlite3")
    assert not (tmp_path / "new.sqlite3").exists()


@pytest.mark.parametrize("field, value", [("seed", 4), ("noise_sd", 0.5), ("image_digest", "0" * 64),
                                          ("provider", "another"), ("params", "N")])
def test_one_run_id_with_another_header_is_refused(tmp_path, field, value):
    shard = make_shard(tmp_path / "shard.sqlite3", (50,), clean=False)
    into = tmp_path / "main.sqlite3"
    merge_logs([shard], into)
    (call,) = calls_of(shard)
    if field == "params":
        header = dataclasses.replace(call.header, params={**call.header.params, "N": 31})
        shown = "params['N']=31"
    else:
        header = dataclasses.replace(call.header, **{field: value})
        shown = f"{field}={value!r}"
    forged = forged_copy(tmp_path / "forged.sqlite3", call, header=header)
    before = snapshot(into)
    with pytest.raises(LogConflictError) as caught:
        merge_logs([forged], into, allow_mixed=True)
    assert shown in str(caught.value) and call.run_id[:12] in str(caught.value)
    assert "different runs" in str(caught.value)
    assert snapshot(into) == before


def test_a_finished_call_gains_no_records_and_keeps_its_status(tmp_path):
    shard = make_shard(tmp_path / "shard.sqlite3", (50,), clean=False)
    into = tmp_path / "main.sqlite3"
    merge_logs([shard], into)
    (call,) = calls_of(shard)
    extra = dataclasses.replace(call.records[-1], sample_index=call.records[-1].sample_index + 1)
    padded = forged_copy(tmp_path / "padded.sqlite3", call, records=[*call.records, extra], status="running")
    before = snapshot(into)
    with pytest.raises(LogConflictError, match="a finished call gains no records"):
        merge_logs([padded], into)
    failed = forged_copy(tmp_path / "failed.sqlite3", call, status="failed")
    with pytest.raises(LogConflictError, match="is complete in .* but failed in"):
        merge_logs([failed], into)
    assert snapshot(into) == before


# -- one experiment ---------------------------------------------------------------------------------


@pytest.mark.parametrize("field, options, shown", [
    ("noise_sd", {"noise_sd": 0.5}, "noise_sd=0.5"),
    ("seed", {"seed": 4}, "seed=4"),
    ("provider", {"name": "other-provider"}, "provider='other-provider'"),
    ("model_version", {"model_version": "v2"}, "model_version='v2'"),
])
def test_mixed_experiments_are_refused_naming_the_field(tmp_path, field, options, shown):
    first = make_shard(tmp_path / "shard-0.sqlite3", (50,), model_version="v1")
    second = make_shard(tmp_path / "shard-1.sqlite3", (70,), **{"model_version": "v1", **options})
    into = tmp_path / "all.sqlite3"
    with pytest.raises(MixedExperimentsError) as caught:
        merge_logs([first, second], into)
    message = str(caught.value)
    assert f"shard-1.sqlite3 has {shown} but " in message and "shard-0.sqlite3 has" in message
    assert "allow_mixed=True" in message and "--allow-mixed" in message
    assert not into.exists()
    report = merge_logs([first, second], into, allow_mixed=True)
    assert report.calls_added == 4


def test_mixed_settings_inside_one_file_are_refused(tmp_path):
    path = make_shard(tmp_path / "one.sqlite3", (50,), clean=False)
    with robust_api.RobustAPI(Counting(), log=path, seed=3, name="test-provider") as api:
        api.certify(image(70), noise_sd=SIGMA, N0=5, N=40)
    with pytest.raises(MixedExperimentsError, match=r"has N=40 but .* has N=30"):
        merge_logs([path], tmp_path / "all.sqlite3")


def test_the_experiment_of_a_call(tmp_path):
    (call,) = calls_of(make_shard(tmp_path / "shard.sqlite3", (50,), clean=False))
    key = experiment_of(call.header)
    assert {"kind": "certify", "noise_sd": SIGMA, "seed": 3, "provider": "test-provider", "N": 30, "N0": 5,
            "alpha": 0.001, "method": "cohen"}.items() <= key.items()
    assert "image_name" not in key and "tag" not in key and "preprocessing" in key


# -- what else is refused -------------------------------------------------------------------------


def test_into_a_source_is_refused(shards, tmp_path):
    with pytest.raises(InvalidParameterError, match="both a source and the log to merge into"):
        merge_logs(shards, shards[1])
    folder = tmp_path / "run"
    make_shard(folder, (50,))
    with pytest.raises(InvalidParameterError, match="both a source"):
        merge_logs([folder / "queries.sqlite3"], folder)  # the folder names the same file
    with open_store(tmp_path / "x.sqlite3") as log:
        with pytest.raises(InvalidParameterError, match="both a source"):
            merge_logs([log], log)
    with pytest.raises(InvalidParameterError, match="SQLite"):
        merge_logs(shards, tmp_path / "all.jsonl")
    with pytest.raises(InvalidParameterError, match="at least one"):
        merge_logs([], tmp_path / "all.sqlite3")
    with pytest.raises(InvalidParameterError, match="a list"):
        merge_logs(shards[0], tmp_path / "all.sqlite3")


# -- the command line ---------------------------------------------------------------------------


def test_merge_logs_command(shards, tmp_path, capsys):
    into = tmp_path / "all.sqlite3"
    assert main(["merge-logs", *map(str, shards), "--into", str(into)]) == 0
    out = capsys.readouterr().out
    assert "8 added, 0 extended, 0 unchanged" in out and "records added" in out
    assert main(["merge-logs", *map(str, shards), "--into", str(into), "--format", "json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["calls_added"], report["calls_unchanged"], report["records_added"]) == (0, 8, 0)
    assert report["sources"] == [str(s) for s in shards]


def test_merge_logs_command_exit_status_on_a_conflict_and_a_mix(tmp_path, capsys):
    shard = make_shard(tmp_path / "shard.sqlite3", (50,), clean=False)
    into = tmp_path / "main.sqlite3"
    assert main(["merge-logs", str(shard), "--into", str(into)]) == 0
    (call,) = calls_of(shard)
    forged = forged_copy(tmp_path / "forged.sqlite3", call, records=[
        dataclasses.replace(r, label="C") if r.phase == "estimation" and r.sample_index == 0 else r
        for r in call.records])
    capsys.readouterr()
    before = snapshot(into)
    assert main(["merge-logs", str(forged), "--into", str(into)]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "Traceback" not in captured.err
    assert captured.err.startswith("robust-api: error: ") and "estimation sample 0" in captured.err
    assert snapshot(into) == before
    other = make_shard(tmp_path / "other.sqlite3", (70,), noise_sd=0.5, clean=False)
    assert main(["merge-logs", str(shard), str(other), "--into", str(tmp_path / "mixed.sqlite3")]) == 2
    assert "noise_sd=0.5" in capsys.readouterr().err
    assert main(["merge-logs", str(shard), str(other), "--into", str(tmp_path / "mixed.sqlite3"),
                 "--allow-mixed"]) == 0
    assert main(["merge-logs", str(shard), "--into", str(shard)]) == 2
    assert "both a source" in capsys.readouterr().err
