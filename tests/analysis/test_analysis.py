"""Offline analysis (robust_api.analysis, robust-api analyze): the counts-based re-certification
must give exactly what certify_from_log gives, call by call, on every store; ground truth,
grouping, repeats and reports are checked on logs whose answers are known."""

from __future__ import annotations

import csv
import hashlib
import json
import math
import sqlite3
from dataclasses import replace

import numpy as np
import pytest

import robust_api
from doubles import FakeProvider
from robust_api import ABSTAIN, QueryFailure, RobustAPI
from robust_api.analysis import analyze, load_labels
from robust_api.commands.cli import main
from robust_api.errors import InvalidInputError, InvalidParameterError, LogIntegrityError
from robust_api.images import as_image, image_digest
from robust_api.offline import certify_from_log
from robust_api.query_logs import export_jsonl, export_parquet, open_log
from robust_api.query_logs.records import MAX_LOGGED_COST_USD, summarize_call
from robust_api.statistics import clopper_pearson_lower


def _random_vote(image):
    """A label drawn from a distribution that depends on the image, from the noisy image's
    bytes (deterministic per query); some noisy copies are refused (error records)."""
    seed = int.from_bytes(hashlib.sha256(image.tobytes()).digest()[:8], "little")
    rng = np.random.default_rng(seed)
    if image.std() > 0.1 and rng.random() < 0.05:  # noisy copies only
        return QueryFailure("rejected", "refused by the test provider")
    level = float(image.mean())
    p_top = 0.55 + 0.45 * min(1.0, abs(level - 0.5) * 4)  # clear for dark or light images
    return "top" if rng.random() < p_top else str(rng.choice(["second", "third"]))


def RandomVotes():
    return FakeProvider(_random_vote, identity="test:random-votes")


def _images(count, seed=0):
    rng = np.random.default_rng(seed)
    return [np.clip(rng.uniform(0, 1) + 0.02 * rng.standard_normal((6, 6, 1)), 0, 1).astype(np.float32)
            for _ in range(count)]


@pytest.fixture(scope="module")
def mixed_log(tmp_path_factory):
    """An SQLite log holding every method, clean and noisy selection, errors and clean predicts."""
    path = tmp_path_factory.mktemp("mixed") / "queries.sqlite3"
    api = RobustAPI(RandomVotes(), log=path, seed=1, progress=False)
    for i, image in enumerate(_images(12)):
        api.predict(image, N=1, noise_sd=0)
        api.certify(image, noise_sd=0.25, N0=10, N=60, alpha=0.01)
        api.certify(image, noise_sd=0.5, method="top2", N0=10, N=40, alpha=0.05)
        api.certify(image, noise_sd=0.25, selection="clean", N=50, alpha=0.001)
        if i % 2 == 0:
            api.certify(image, noise_sd=0.25, method="sequential", radius=0.2, N=200, alpha=0.001)
    api.close()
    return path


def _by_run(report):
    return {row.run_id: row for row in report.rows}


@pytest.mark.parametrize("store", ["sqlite", "jsonl", "calls"])
@pytest.mark.parametrize("alpha", [None, 0.02])
def test_rows_equal_certify_from_log_call_by_call(mixed_log, tmp_path, store, alpha):
    log = open_log(mixed_log)
    calls = [call for call in log if call.kind == "certify"]
    if store == "sqlite":
        source = mixed_log
    elif store == "jsonl":
        source = tmp_path / "mixed.jsonl"
        export_jsonl(open_log(mixed_log), source)
    else:
        source = [list(open_log(mixed_log))]
    report = analyze(source, alpha=alpha)
    rows = _by_run(report)
    assert len(rows) == len(calls) == 12 * 3 + 6
    methods = set()
    for call in calls:
        cert = certify_from_log(call, alpha=alpha)
        row = rows[call.run_id]
        methods.add((row.method, cert.selection))
        assert row.label == (None if cert.label is ABSTAIN else cert.label)
        assert row.radius == cert.radius
        assert row.p_lower == cert.p_lower
        assert row.alpha == cert.alpha
        assert row.samples == cert.samples
        assert row.queries == sum(not r.reused for r in call.records)
    assert methods == {("cohen", "noise"), ("top2", "noise"), ("cohen", "clean"), ("sequential", "clean")}
    # the log really exercises errors and abstentions
    assert any(r.error is not None for call in calls for r in call.records)
    assert any(row.label is None for row in rows.values()) and any(row.label for row in rows.values())


def test_sqlite_summaries_equal_record_counts(mixed_log):
    log = open_log(mixed_log)
    summaries = log.call_summaries()
    for summary, call in zip(summaries, log):
        expected = summarize_call(call)
        assert summary.header == expected.header and summary.status == expected.status
        assert summary.phases.keys() == expected.phases.keys()
        for name, votes in summary.phases.items():
            other = expected.phases[name]
            assert (votes.votes, votes.errors, votes.samples, votes.paid, votes.missing, votes.invalid_costs) == (
                other.votes, other.errors, other.samples, other.paid, other.missing, other.invalid_costs)
            assert votes.cost_usd == pytest.approx(other.cost_usd)


def _copy(log, target):
    with sqlite3.connect(log) as source, sqlite3.connect(target) as copy:
        source.backup(copy)  # a byte copy could miss what is still in the -wal file
    return target


def test_a_complete_call_with_a_missing_record_is_listed_as_damaged_never_certified(mixed_log, tmp_path):
    """Marked complete yet a sample is missing: never in an honest log. The call is left out and
    listed (loudly); certifying it from the samples that remain is refused; the rest is analysed."""
    broken = _copy(mixed_log, tmp_path / "broken.sqlite3")
    with sqlite3.connect(broken) as conn:
        run_id, call_id = conn.execute(
            "SELECT run_id, call_id FROM calls WHERE kind = 'certify' AND params LIKE '%cohen%' LIMIT 1").fetchone()
        estimation = conn.execute("SELECT COUNT(*) FROM queries WHERE call_id = ? AND phase = 'estimation'",
                                  (call_id,)).fetchone()[0]
        conn.execute("DELETE FROM queries WHERE call_id = ? AND phase = 'estimation' AND sample_index = 3", (call_id,))
    report = analyze(broken)
    whole = _by_run(analyze(mixed_log))
    rows = _by_run(report)
    assert run_id not in rows and set(rows) == set(whole) - {run_id}
    assert all(replace(rows[r], source="") == replace(whole[r], source="") for r in rows)  # the others as before
    assert report.skipped["damaged"] == 1 and not report.skipped.get("incomplete")
    (listed,) = report.incomplete
    assert listed.run_id == run_id and listed.status == "complete" and listed.damaged
    assert listed.phases["estimation"] == (estimation - 1, 1)
    assert listed.queries == whole[run_id].queries - 1
    text = report.table()
    assert "WARNING: 1 certify call(s) are marked complete but have missing samples" in text and run_id in text
    damaged = next(call for call in open_log(broken) if call.run_id == run_id)
    with pytest.raises(LogIntegrityError, match="missing record"):
        certify_from_log(damaged)  # offline re-certification refuses it too


def test_a_duplicated_sample_index_is_refused(mixed_log):
    """Two records for one sample index never come from an honest log: the log is refused."""
    call = next(call for call in open_log(mixed_log) if call.kind == "certify")
    forged = call.with_records(call.records + (call.phase_records("estimation")[0],))
    with pytest.raises(LogIntegrityError, match="duplicate"):
        analyze([forged])


_CRASHING_WORKER = """
import sys, threading
import numpy as np
from robust_api import RobustAPI

log = sys.argv[1]
state = {"calls": 0}
lock = threading.Lock()

def classify(batch):
    with lock:
        state["calls"] += 1
        number = state["calls"]
    if number == 2:  # call 1 is the selection; the first estimation batch to arrive never answers
        threading.Event().wait()
    return ["cat" if float(x.mean()) < 0.5 else "dog" for x in batch]

api = RobustAPI(classify, name="test:crash", log=log, seed=5, batch_size=10, concurrency=4, progress=False)
api.certify(np.full((8, 8, 1), 0.2, np.float32), noise_sd=0.25, N0=10, N=100)
"""


def test_an_interrupted_call_with_a_gap_is_listed_and_the_log_analysed(tmp_path, capsys):
    """A certify killed with SIGKILL while a batch was in flight and later ones had committed:
    its estimation indices have a gap. The analysis reports the complete calls, lists the
    interrupted one with what it paid, on the SQLite log and on its JSONL export."""
    import signal
    import subprocess
    import sys
    import time

    log = tmp_path / "crashed.sqlite3"
    api = RobustAPI(_level_classifier, name="test:crash", log=log, seed=5, batch_size=10, progress=False)
    done = api.certify(np.full((8, 8, 1), 0.8, np.float32), noise_sd=0.25, N0=10, N=100)  # a complete call
    api.close()
    worker = tmp_path / "worker.py"
    worker.write_text(_CRASHING_WORKER)
    process = subprocess.Popen([sys.executable, str(worker), str(log)], stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and process.poll() is None:
            with sqlite3.connect(f"file:{log}?mode=ro", uri=True) as conn:
                logged = conn.execute(
                    "SELECT COUNT(*) FROM queries q JOIN calls c ON q.call_id = c.call_id "
                    "WHERE c.status = 'running' AND q.phase = 'estimation'").fetchone()[0]
            if logged == 90:  # every estimation batch but the blocked one is committed
                break
            time.sleep(0.02)
        assert logged == 90, process.stderr.read() if process.poll() is not None else "timed out"
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    export_jsonl(open_log(log), tmp_path / "crashed.jsonl")
    for source in (log, tmp_path / "crashed.jsonl"):
        report = analyze(source)
        (row,) = report.rows
        assert row.run_id == done.logs.run_id and row.radius == done.radius
        assert report.skipped["incomplete"] == 1 and not report.skipped.get("damaged")
        (listed,) = report.incomplete
        assert listed.status == "running" and not listed.damaged
        assert listed.phases == {"selection": (10, 0), "estimation": (90, 10)}
        assert listed.queries == 100 and listed.cost_usd == 0.0 and report.incomplete_queries == 100
        text = report.table()
        assert "did not complete" in text and "estimation 90 (10 missing below index 99)" in text
        assert listed.run_id in text and "paid 100 queries" in text
        crashed = next(call for call in open_log(source) if call.status == "running")
        with pytest.raises(LogIntegrityError, match="missing record"):
            certify_from_log(crashed)  # never certified from the samples that happen to be there
        assert main(["analyze", str(source)]) == 0  # the command too
        out = capsys.readouterr().out
        assert "estimation 90 (10 missing below index 99)" in out and "N0=10 N=100" in out


# ----------------------------------------------------------------------- known answers


def _level_classifier(batch):
    """ "cat" for dark images, "dog" for light ones; exactly 0.5 is "dog"."""
    return ["cat" if float(image.mean()) < 0.5 else "dog" for image in batch]


@pytest.fixture()
def known(tmp_path):
    """Three 16×16 images: dark (always cat), light (always dog, truly a cat), grey (a coin flip:
    abstains) with a labels CSV naming the files, and a log of clean predicts and certificates."""
    folder = tmp_path / "images"
    folder.mkdir()
    from PIL import Image

    levels = {"dark.png": 25, "light.png": 230, "grey.png": 128}
    for name, value in levels.items():
        Image.fromarray(np.full((16, 16), value, dtype=np.uint8)).save(folder / name)
    with open(folder / "labels.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "label", "class_name"])
        for name in levels:
            writer.writerow([name, 0, "cat"])
    log = tmp_path / "log.sqlite3"
    api = RobustAPI(_level_classifier, log=log, seed=0, progress=False)
    for name in levels:
        api.predict(folder / name, N=1, noise_sd=0)
        api.certify(folder / name, noise_sd=0.25, N0=20, N=100, alpha=0.001)
    api.close()
    return folder, log


def test_known_answers_with_true_labels_and_clean_labels(known):
    folder, log = known
    ceiling = 0.25 * float(__import__("scipy.stats").stats.norm.ppf(clopper_pearson_lower(100, 100, 0.001)))
    by_labels = analyze(log, labels=folder / "labels.csv", radii=(0, 0.25, 0.5))
    (group,) = by_labels.groups
    assert group.images == 3 and group.with_truth == 3
    assert group.certified_accuracy == pytest.approx({0.0: 1 / 3, 0.25: 1 / 3, 0.5: 0.0})
    assert group.acr == pytest.approx(ceiling / 3)
    assert group.abstention_rate == pytest.approx(1 / 3)
    assert group.queries == 3 * 120 and by_labels.predict_queries == 3
    assert "true labels from" in by_labels.table()

    by_clean = analyze(log, radii=(0, 0.25, 0.5))
    (group,) = by_clean.groups
    assert group.certified_accuracy == pytest.approx({0.0: 2 / 3, 0.25: 2 / 3, 0.5: 0.0})
    assert group.acr == pytest.approx(2 * ceiling / 3)
    assert "clean image" in by_clean.table()
    truths = {row.image: row.truth for row in by_clean.rows}
    assert sorted(truths.values()) == ["cat", "dog", "dog"]  # grey's clean image is exactly 0.5: "dog"


def test_labels_file_columns(known, tmp_path):
    folder, _ = known
    labels = load_labels(folder / "labels.csv")
    digest = image_digest(as_image(folder / "dark.png"))
    assert labels[digest] == "cat"
    assert load_labels(folder / "labels.csv", label_column="label")[digest] == "0"
    by_digest = tmp_path / "digests.csv"
    by_digest.write_text(f"image_digest,label\n{digest},cat\n")
    assert load_labels(by_digest) == {digest: "cat"}
    bad = tmp_path / "bad.csv"
    bad.write_text("name,label\nx.png,cat\n")
    with pytest.raises(InvalidInputError, match="'file' or 'image_digest'"):
        load_labels(bad)
    missing = tmp_path / "missing.csv"
    missing.write_text("file,label\nnot-there.png,cat\n")
    with pytest.raises(InvalidInputError, match="no image"):
        load_labels(missing)


def test_images_without_truth_are_reported_not_counted(known, tmp_path):
    folder, log = known
    only_dark = tmp_path / "only_dark.csv"
    only_dark.write_text(f"image_digest,label\n{image_digest(as_image(folder / 'dark.png'))},cat\n")
    report = analyze(log, labels=only_dark)
    (group,) = report.groups
    assert group.images == 3 and group.with_truth == 1
    assert group.certified_accuracy[0.0] == 1.0
    assert "2 certified image(s) have no ground truth" in report.table()


def test_a_rerun_that_reused_the_log_counts_once(known):
    folder, log = known
    api = RobustAPI(_level_classifier, log=log, seed=0, progress=False)
    again = api.certify(folder / "dark.png", noise_sd=0.25, N0=20, N=100, alpha=0.001)
    assert again.queries == 0
    report = analyze(log)
    assert report.groups[0].images == 3
    assert report.skipped["repeat"] == 1
    assert "repeated call" in report.table()
    assert report.groups[0].queries == 3 * 120  # the rerun paid nothing


def test_incomplete_calls_are_left_out(known):
    folder, log = known
    with sqlite3.connect(log) as conn:
        conn.execute("UPDATE calls SET status = 'running' WHERE run_id = "
                     "(SELECT run_id FROM calls WHERE kind = 'certify' LIMIT 1)")
    report = analyze(log)
    assert report.groups[0].images == 2 and report.skipped["incomplete"] == 1
    assert "did not complete" in report.table()


def test_grouping_and_formats(mixed_log, tmp_path):
    report = analyze(mixed_log, radii=(0.0, 0.1), by=("noise_sd", "method"))
    keys = [tuple(group.key.values()) for group in report.groups]
    assert keys == [(0.25, "cohen"), (0.25, "sequential"), (0.5, "top2")]
    assert [group.images for group in report.groups] == [24, 6, 12]
    text = report.table()
    assert text.splitlines()[0].split()[:5] == ["noise_sd", "method", "images", "r=0", "r=0.1"]
    lines = report.to_csv(tmp_path / "out.csv").splitlines()
    assert lines[0].startswith("noise_sd,method,images,with_truth,acc@0,acc@0.1,acr")
    assert len(lines) == 4 and (tmp_path / "out.csv").read_text().splitlines() == lines
    data = json.loads(json.dumps(report.to_json(rows=True)))
    assert [group["images"] for group in data["groups"]] == [24, 6, 12]
    assert len(data["rows"]) == 42 and data["truth"] == "clean"
    figure = report.plot(tmp_path / "curve.png")
    assert (tmp_path / "curve.png").read_bytes()[:4] == b"\x89PNG"
    assert len(figure.axes[0].get_lines()) == 3


def test_curve_is_the_exact_step_function(known):
    _, log = known
    report = analyze(log)
    grid, values = report.curve(report.groups[0])
    assert grid[0] == 0.0 and values[0] == pytest.approx(2 / 3)
    assert np.all(np.diff(values) <= 0)
    radius = max(row.radius for row in report.rows)
    _, at = report.curve(report.groups[0], [radius, np.nextafter(radius, 1.0)])
    assert at.tolist() == [pytest.approx(2 / 3), 0.0]


@pytest.mark.parametrize("kwargs, match", [
    (dict(truth="oracle"), "truth must be"),
    (dict(truth="labels"), "needs labels="),
    (dict(by=("colour",)), "cannot group by"),
    (dict(radii=(-0.1,)), "radii"),
    (dict(radii=()), "at least one radius"),
    (dict(alpha=1.5), "alpha"),
])
def test_bad_arguments_are_refused(known, kwargs, match):
    _, log = known
    with pytest.raises(InvalidParameterError, match=match):
        analyze(log, **kwargs)


def test_not_a_log_is_refused(tmp_path):
    junk = tmp_path / "junk.sqlite3"
    junk.write_text("not a database")
    with pytest.raises(robust_api.NotAQueryLogError):
        analyze(junk)
    with pytest.raises(InvalidInputError, match="iterables of CallLog"):
        analyze([42])


def test_the_shipped_sample_log_analyses(tmp_path):
    root = __import__("pathlib").Path(__file__).resolve().parents[2]
    report = analyze(root / "query_logs" / "fashion_mnist_local_seed0.jsonl",
                     labels=root / "examples" / "images" / "LABELS.csv")
    assert sorted(group.key["noise_sd"] for group in report.groups) == [0.12, 0.25]
    for group in report.groups:
        assert group.images == 10 and group.with_truth == 10
        assert group.queries == 10 * 120
        assert not math.isnan(group.acr)


# ----------------------------------------------------------------------- the command


def test_cli_analyze_formats_and_plot(known, tmp_path, capsys):
    folder, log = known
    plot = tmp_path / "plot.png"
    assert main(["analyze", str(log), "--labels", str(folder / "labels.csv"), "--radii", "0,0.25",
                 "--plot", str(plot)]) == 0
    out = capsys.readouterr().out
    assert "r=0.25" in out and "33.3" in out and "true labels from" in out
    assert plot.read_bytes()[:4] == b"\x89PNG"
    assert main(["analyze", str(log), "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["groups"][0]["certified_accuracy"]["0.25"] == pytest.approx(2 / 3)
    assert main(["analyze", str(log), "--format", "csv", "--by", "provider"]) == 0
    assert capsys.readouterr().out.splitlines()[0].startswith("provider,images,with_truth")


def test_cli_analyze_errors(tmp_path, capsys):
    assert main(["analyze", str(tmp_path / "nothing.sqlite3")]) != 0
    assert "no query log" in capsys.readouterr().err
    assert main(["analyze", str(tmp_path), "--by", "colour"]) != 0
    assert "cannot group by" in capsys.readouterr().err


# ----------------------------------------------------------------------- the predecessor's files


def test_predecessor_tsv_files_analyse_with_their_own_truth(tmp_path):
    api_tsv = tmp_path / "log.txt"
    api_tsv.write_text("idx\tcorrect\tradius\tlabel\tpredict\n0\tTrue\t0.300\tcat\tcat\n1\tFalse\t0.000\tdog\t-1\n"
                       "2\tFalse\t0.200\tdog\tcat\n3\tTrue\t0.100\tcat\tcat\n")
    cohen_tsv = tmp_path / "cohen.tsv"
    cohen_tsv.write_text("idx\tlabel\tpredict\tradius\tcorrect\ttime\n0\t3\t3\t0.61\t1\t0:00:01\n1\t5\t-1\t0.0\t0\t0:00:01\n")
    report = analyze([api_tsv, cohen_tsv], labels={"unused": "x"}, radii=(0, 0.25))
    first, second = report.groups
    assert first.key["provider"] == f"tsv:{cohen_tsv}" and second.key["provider"] == f"tsv:{api_tsv}"
    assert first.certified_accuracy == {0.0: 0.5, 0.25: 0.5}
    assert second.certified_accuracy == {0.0: 0.5, 0.25: 0.25}
    assert second.abstention_rate == 0.25 and second.queries is None
    assert "TSV rows: the file's label column" in report.table()


def test_imported_predecessor_pickles_pair_clean_labels_with_certificates(tmp_path):
    import pickle

    folder = tmp_path / "legacy"
    folder.mkdir()
    answers = {0: ["cat"] * 120, 1: ["dog"] * 60 + ["cat"] * 60, 2: ["cat"] * 20 + ["dog"] * 100}
    for index, labels in answers.items():
        response = [[{"name": label, "confidence": 0.9}] for label in labels]
        with open(folder / f"pred_hist_{index}.pkl", "wb") as handle:
            pickle.dump({"ground_truth": [[{"name": "cat", "confidence": 0.9}]], "pred": response}, handle)
    log = robust_api.import_legacy(folder, "azure", 0.25, out=tmp_path / "imported.sqlite3")
    log.close()
    report = analyze(tmp_path / "imported.sqlite3", radii=(0.0,))
    (group,) = report.groups
    assert group.key["provider"] == "legacy:azure" and group.images == 3 and group.with_truth == 3
    # image 0: certified cat (clean label cat); image 1: selection says dog, 60/100 dog: abstains;
    # image 2: selection cat, estimation all dog: abstains
    assert group.certified_accuracy[0.0] == pytest.approx(1 / 3)
    assert group.queries == 3 * 120 and report.predict_queries == 3


def test_a_folder_source_reads_every_log_in_it(tmp_path, known):
    _, log = known
    folder = tmp_path / "logs"
    folder.mkdir()
    export_jsonl(open_log(log), folder / "a.jsonl")
    with sqlite3.connect(log) as source, sqlite3.connect(folder / "b.sqlite3") as copy:
        source.backup(copy)  # a byte copy could miss what is still in the -wal file
    (folder / "notes.md").write_text("not a log")
    report = analyze(folder)
    assert report.groups[0].images == 3 and report.skipped["duplicate"] == 6  # same 6 calls twice: read once
    assert report.predict_queries == 3
    assert report.groups[0].queries == 3 * 120 and "read once" in report.table()
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="no query logs"):
        analyze(empty)


def test_tsv_radii_count_only_what_their_rounding_makes_certain(tmp_path):
    """log.txt printed radii with 3 decimals: 0.250 may have been 0.2495, so it does not count at r = 0.25."""
    first, second = tmp_path / "a", tmp_path / "b"
    for folder, radius in ((first, "0.250"), (second, "0.251")):
        folder.mkdir()
        (folder / "log.txt").write_text(f"idx\tcorrect\tradius\tlabel\tpredict\n0\tTrue\t{radius}\tcat\tcat\n")
    report = analyze([first / "log.txt", second / "log.txt"], radii=(0.25,))
    # every predecessor TSV is called log.txt: the path keeps two runs apart
    assert [group.certified_accuracy[0.25] for group in report.groups] == [0.0, 1.0]


def test_an_unknown_method_is_refused_not_given_a_fixed_n_bound(known, tmp_path):
    _, log = known
    with sqlite3.connect(log) as conn:
        conn.execute("UPDATE calls SET params = json_set(params, '$.method', 'adaptive-v2') WHERE kind = 'certify'")
    with pytest.raises(InvalidParameterError, match="method must be one of"):
        analyze(log)


def test_incomplete_calls_spending_is_reported(known):
    _, log = known
    with sqlite3.connect(log) as conn:
        conn.execute("UPDATE calls SET status = 'failed' WHERE run_id = "
                     "(SELECT run_id FROM calls WHERE kind = 'certify' LIMIT 1)")
    report = analyze(log)
    assert report.incomplete_queries == 120 and report.groups[0].queries == 240
    assert "left-out calls paid 120 queries" in report.table()
    (listed,) = report.incomplete
    assert listed.status == "failed" and listed.phases == {"selection": (20, 0), "estimation": (100, 0)}
    assert f"{listed.run_id} (failed): selection 20, estimation 100; paid 120 queries, USD 0.00" in report.table()


def test_sources_may_be_a_query_log_or_one_call(known):
    _, log = known
    opened = open_log(log)
    by_log = analyze(opened)
    assert by_log.groups[0].images == 3 and by_log.sources == ["SQLiteQueryLog"]
    one = next(call for call in opened if call.kind == "certify")
    (row,) = analyze(one).rows
    assert row.run_id == one.run_id and row.radius == certify_from_log(one).radius


def test_cli_analyze_refuses_bad_labels_and_plot_paths(known, tmp_path, capsys):
    folder, log = known
    short = tmp_path / "short.csv"
    short.write_text("image_digest,label\nabc\n")
    latin = tmp_path / "latin.csv"
    latin.write_bytes("image_digest,label\nabc,caf\xe9\n".encode("latin-1"))
    for labels, message in ((short, "line 2"), (latin, "not a UTF-8 CSV"), (tmp_path, "no labels CSV")):
        assert main(["analyze", str(log), "--labels", str(labels)]) == 2
        assert message in capsys.readouterr().err
    assert main(["analyze", str(log), "--plot", str(tmp_path / "plot.xyz")]) == 2
    out, err = capsys.readouterr()
    assert "use .png, .pdf or .svg" in err and out == ""  # refused before the analysis printed anything


# ----------------------------------------------------------------------- costs read from a log


def _one_record(log, kind):
    with sqlite3.connect(log) as conn:
        return conn.execute(
            "SELECT q.id, c.run_id FROM queries q JOIN calls c ON q.call_id = c.call_id WHERE c.kind = ? "
            "ORDER BY q.id LIMIT 1", (kind,)).fetchone()


def _check_unknown_cost(report, run_id):
    (group,) = report.groups
    assert group.cost_usd is None and group.invalid_costs == 1 and group.queries == 3 * 120
    assert report.invalid_cost_calls == [run_id]
    text = report.table()
    header, _, row = text.splitlines()[:3]
    assert header.split()[-1] == "USD" and row.split()[-1] == "unknown"
    assert "USD unknown: 1 call(s) log a per-query cost that is not a valid price" in text and run_id in text
    figures = "\n".join(line for line in text.splitlines() if not line.startswith("USD unknown"))
    assert "nan" not in figures.lower() and "inf" not in figures.lower()
    json.dumps(report.to_json(rows=True), allow_nan=False)  # strict JSON: no NaN or Infinity anywhere
    csv_row = dict(zip(*[line.split(",") for line in report.to_csv().splitlines()]))
    assert csv_row["cost_usd"] == "" and csv_row["invalid_costs"] == "1"


@pytest.mark.parametrize("bad", [math.inf, -math.inf, -0.5, 1e6, "abc", b"\x00"])
def test_an_invalid_cost_in_an_sqlite_log_makes_the_total_unknown_not_wrong(known, tmp_path, bad):
    _, log = known
    record_id, run_id = _one_record(log, "certify")
    with sqlite3.connect(log) as conn:
        conn.execute("UPDATE queries SET cost_usd = ? WHERE id = ?", (bad, record_id))
    _check_unknown_cost(analyze(log), run_id)


def test_nan_costs_in_an_export_are_reported_unknown(known, tmp_path):
    """JSON allows NaN literals: an export (or a hand-made file) may carry them, for certify and
    predict calls alike."""
    _, log = known
    export = tmp_path / "costs.jsonl"
    export_jsonl(open_log(log), export)
    lines = [json.loads(line) for line in export.read_text().splitlines()]
    kinds = {line["run_id"]: line["kind"] for line in lines if line["type"] == "call"}
    first = {}
    for line in lines:
        if line["type"] == "query" and kinds[line["run_id"]] not in first:
            first[kinds[line["run_id"]]] = line["run_id"]
            line["cost_usd"] = math.nan
    export.write_text("".join(json.dumps(line) + "\n" for line in lines))
    parquet = tmp_path / "costs.parquet"
    export_parquet(open_log(export), parquet)  # NaN doubles in a Parquet column
    for source in (export, parquet):
        report = analyze(source)
        (group,) = report.groups
        assert group.cost_usd is None and group.invalid_costs == 1
        assert report.predict_cost_usd is None and report.predict_queries == 3
        assert set(report.invalid_cost_calls) == {first["certify"], first["predict"]}
        text = report.table()
        assert "predict calls (clean labels) paid 3 more queries (USD unknown)" in text
        figures = "\n".join(line for line in text.splitlines() if not line.startswith("USD unknown"))
        assert "nan" not in figures.lower() and "inf" not in figures.lower()
        json.dumps(report.to_json(rows=True), allow_nan=False)


def test_valid_costs_are_summed_up_to_the_ceiling(known):
    _, log = known
    record_id, _ = _one_record(log, "certify")
    with sqlite3.connect(log) as conn:
        conn.execute("UPDATE queries SET cost_usd = 0.0015")
        conn.execute("UPDATE queries SET cost_usd = ? WHERE id = ?", (MAX_LOGGED_COST_USD, record_id))
    report = analyze(log)
    (group,) = report.groups
    assert group.invalid_costs == 0 and not report.invalid_cost_calls
    assert group.cost_usd == pytest.approx((3 * 120 - 1) * 0.0015 + MAX_LOGGED_COST_USD)
    assert report.predict_cost_usd == pytest.approx(3 * 0.0015)
    assert f"{group.cost_usd:.2f}" in report.table()
