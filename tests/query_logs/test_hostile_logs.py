"""Hostile and broken log files: each one ends in the project's typed error, at every entry
point that reads a log, and a writer leaves it byte for byte as it was.

The corpus is built here, from one honest log made by the store: SQLite files with a changed
schema (triggers, views, other tables, columns, types, constraints, indexes), damaged bytes,
wrong meta, malformed values; JSONL and Parquet exports with bad lines, wrong types, missing
keys, duplicates and overlong lines; and things that are not files at all (a folder, a FIFO,
symbolic-link loops). Entry points: ``robust_api.open_log`` (then offline certify/predict of
every call), ``robust_api.analyze``, the CLI's ``analyze`` and ``recertify`` (exit status 2 and
a one-line message), and ``RobustAPI(log=path)`` for writers.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import robust_api
from robust_api import RobustAPI, export_jsonl, export_parquet, open_log
from robust_api.commands.cli import main
from robust_api.errors import LogAccessError, LogIntegrityError, NotAQueryLogError, UntrustedLogError
from robust_api.query_logs import exchange, opening

from doubles import Counting

REPO = Path(__file__).resolve().parents[2]
IMAGE = np.tile(np.array([60, 200], np.uint8), 32).reshape(8, 8)
NOT_A_LOG, UNTRUSTED, INTEGRITY = NotAQueryLogError, UntrustedLogError, LogIntegrityError


@pytest.fixture(scope="module")
def honest(tmp_path_factory) -> Path:
    """An honest SQLite log: one clean predict call and one certify call (its main file holds everything)."""
    folder = tmp_path_factory.mktemp("honest")
    path = folder / "honest.sqlite3"
    api = RobustAPI(Counting(), log=path, seed=3, name="hostile-test")
    api.predict(IMAGE, N=1, noise_sd=0)
    cert = api.certify(IMAGE, noise_sd=0.25, N0=5, N=30)
    assert cert.radius > 0
    api.log.close()  # the last connection: SQLite checkpoints, the main file holds every page
    return path


def _copy(honest: Path, folder: Path, name: str = "log.sqlite3") -> Path:
    target = folder / name
    shutil.copyfile(honest, target)
    return target


def _edit(path: Path, *statements: str, writable_schema: bool = False) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA foreign_keys=OFF")
        if writable_schema:
            conn.execute("PRAGMA writable_schema=ON")
        for statement in statements:
            conn.execute(statement)
    finally:
        conn.close()


def _recreate_queries(path: Path, definition: str) -> None:
    """Replace the queries table by one defined with ``definition`` (its rows copied over)."""
    _edit(path, "ALTER TABLE queries RENAME TO old_queries", f"CREATE TABLE queries ({definition})",
          "INSERT INTO queries SELECT * FROM old_queries", "DROP TABLE old_queries")


QUERIES_COLUMNS = (
    "id INTEGER PRIMARY KEY AUTOINCREMENT, call_id INTEGER NOT NULL REFERENCES calls (call_id), "
    "phase TEXT NOT NULL, sample_index INTEGER NOT NULL, label TEXT, raw TEXT, latency_s REAL NOT NULL, "
    "cost_usd REAL NOT NULL, timestamp REAL NOT NULL, error TEXT, reused INTEGER NOT NULL DEFAULT 0"
)


# -- the SQLite corpus: name -> (builder, error type, entry points that pass instead) ----------

def _sqlite_cases():
    cases = {}

    def case(name, expected, **overrides):
        """A hostile file; ``overrides``: entry point → what it gives instead (None: it passes)."""
        def register(builder):
            cases[name] = (builder, expected, {key.replace("_", "-"): value for key, value in overrides.items()})
            return builder
        return register

    @case("zero_bytes", NOT_A_LOG)
    def _(honest, folder):
        path = folder / "log.sqlite3"
        path.write_bytes(b"")
        return path

    @case("nul_bytes", NOT_A_LOG)
    def _(honest, folder):
        path = folder / "log.sqlite3"
        path.write_bytes(b"\x00" * 8192)
        return path

    @case("random_bytes", NOT_A_LOG)
    def _(honest, folder):
        path = folder / "log.sqlite3"
        path.write_bytes(np.random.default_rng(1).bytes(8192))
        return path

    @case("random_after_magic", NOT_A_LOG)
    def _(honest, folder):
        path = folder / "log.sqlite3"
        path.write_bytes(b"SQLite format 3\x00" + np.random.default_rng(2).bytes(8192))
        return path

    @case("truncated_to_one_page", NOT_A_LOG)
    def _(honest, folder):
        path = _copy(honest, folder)
        with open(path, "r+b") as handle:
            handle.truncate(4096)
        return path

    @case("truncated_half", NOT_A_LOG)
    def _(honest, folder):
        path = _copy(honest, folder)
        with open(path, "r+b") as handle:
            handle.truncate(path.stat().st_size // 2)
        return path

    @case("other_sqlite_database", NOT_A_LOG)
    def _(honest, folder):
        path = folder / "log.sqlite3"
        _edit(path, "CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)", "INSERT INTO customers VALUES (1, 'x')")
        return path

    @case("sqlite_without_tables", NOT_A_LOG)
    def _(honest, folder):
        path = folder / "log.sqlite3"
        _edit(path, "PRAGMA user_version=7")
        return path

    @case("meta_names_other_format", NOT_A_LOG)
    def _(honest, folder):
        path = _copy(honest, folder)
        _edit(path, "UPDATE meta SET value = 'someone.else' WHERE key = 'format'")
        return path

    @case("meta_without_rows", NOT_A_LOG)
    def _(honest, folder):
        path = _copy(honest, folder)
        _edit(path, "DELETE FROM meta")
        return path

    @case("future_format_version", NOT_A_LOG)
    def _(honest, folder):
        path = _copy(honest, folder)
        _edit(path, "UPDATE meta SET value = '2' WHERE key = 'format_version'")
        return path

    @case("format_version_not_a_number", NOT_A_LOG)
    def _(honest, folder):
        path = _copy(honest, folder)
        _edit(path, "UPDATE meta SET value = 'one' WHERE key = 'format_version'")
        return path

    @case("trigger_rewrites_labels", UNTRUSTED)
    def _(honest, folder):
        path = _copy(honest, folder)
        _edit(path, "CREATE TRIGGER forge AFTER INSERT ON queries BEGIN "
                    "UPDATE queries SET label = 'A' WHERE id = new.id; END")
        return path

    @case("view_of_fake_votes", UNTRUSTED)
    def _(honest, folder):
        path = _copy(honest, folder)
        _edit(path, "ALTER TABLE queries RENAME TO honest_queries",
              "CREATE TABLE fake AS SELECT * FROM honest_queries", "UPDATE fake SET label = 'A'",
              "CREATE VIEW queries AS SELECT * FROM fake")
        return path

    @case("extra_table", UNTRUSTED)
    def _(honest, folder):
        path = _copy(honest, folder)
        _edit(path, "CREATE TABLE notes (text TEXT)")
        return path

    @case("extra_index", UNTRUSTED)
    def _(honest, folder):
        path = _copy(honest, folder)
        _edit(path, "CREATE INDEX by_label ON queries (lower(label))")
        return path

    @case("missing_index", UNTRUSTED)
    def _(honest, folder):
        path = _copy(honest, folder)
        _edit(path, "DROP INDEX calls_by_image")
        return path

    @case("extra_column", UNTRUSTED)
    def _(honest, folder):
        path = _copy(honest, folder)
        _edit(path, "ALTER TABLE queries ADD COLUMN weight REAL DEFAULT 1")
        return path

    @case("missing_column", UNTRUSTED)
    def _(honest, folder):
        path = _copy(honest, folder)
        _edit(path, "ALTER TABLE queries DROP COLUMN error")
        return path

    @case("label_column_made_integer", UNTRUSTED)
    def _(honest, folder):
        path = _copy(honest, folder)
        _recreate_queries(path, QUERIES_COLUMNS.replace("label TEXT", "label INTEGER") + ", UNIQUE (call_id, phase, sample_index)")
        return path

    @case("unique_constraint_dropped", UNTRUSTED)
    def _(honest, folder):
        path = _copy(honest, folder)
        _recreate_queries(path, QUERIES_COLUMNS)
        return path

    @case("labels_compared_without_case", UNTRUSTED)
    def _(honest, folder):
        path = _copy(honest, folder)
        _recreate_queries(path, QUERIES_COLUMNS.replace("label TEXT", "label TEXT COLLATE NOCASE")
                          + ", UNIQUE (call_id, phase, sample_index)")
        return path

    @case("label_default_changed", UNTRUSTED)
    def _(honest, folder):
        path = _copy(honest, folder)
        _recreate_queries(path, QUERIES_COLUMNS.replace("label TEXT", "label TEXT DEFAULT 'A'")
                          + ", UNIQUE (call_id, phase, sample_index)")
        return path

    @case("schema_text_rewritten", UNTRUSTED)
    def _(honest, folder):
        path = _copy(honest, folder)
        _edit(path, "UPDATE sqlite_master SET sql = replace(sql, 'label TEXT', 'label TEXT CHECK (label = label)') "
                    "WHERE name = 'queries'", writable_schema=True)
        return path

    @case("params_not_json", NOT_A_LOG)
    def _(honest, folder):
        path = _copy(honest, folder)
        _edit(path, "UPDATE calls SET params = '{not json' WHERE kind = 'certify'")
        return path

    @case("params_nested_too_deep", NOT_A_LOG)
    def _(honest, folder):
        path = _copy(honest, folder)
        _edit(path, f"UPDATE calls SET params = '{'[' * 100000}{']' * 100000}' WHERE kind = 'certify'")
        return path

    @case("image_shape_not_a_list", NOT_A_LOG)
    def _(honest, folder):
        path = _copy(honest, folder)
        _edit(path, "UPDATE calls SET image_shape = '\"8x8\"'")
        return path

    @case("image_shape_huge", NOT_A_LOG)
    def _(honest, folder):
        path = _copy(honest, folder)
        _edit(path, "UPDATE calls SET image_shape = '[100000000000000000000, 8, 1]'")
        return path

    @case("raw_not_json", NOT_A_LOG, analyze=None, cli_analyze=None)  # analysis never reads raw answers
    def _(honest, folder):
        path = _copy(honest, folder)
        _edit(path, "UPDATE queries SET raw = '{\"label\": ' WHERE id = (SELECT MAX(id) FROM queries)")
        return path

    @case("label_stored_as_blob", NOT_A_LOG)
    def _(honest, folder):
        path = _copy(honest, folder)
        _edit(path, "UPDATE queries SET label = x'41' WHERE phase = 'estimation' AND sample_index = 1")
        return path

    @case("label_with_nul_byte_blob", NOT_A_LOG)
    def _(honest, folder):
        path = _copy(honest, folder)
        _edit(path, "UPDATE queries SET label = x'4100' WHERE phase = 'selection' AND sample_index = 0")
        return path

    @case("unknown_phase", NOT_A_LOG)
    def _(honest, folder):
        path = _copy(honest, folder)
        _edit(path, "UPDATE queries SET phase = 'Estimation' WHERE phase = 'estimation' AND sample_index = 2")
        return path

    @case("negative_sample_index", INTEGRITY)
    def _(honest, folder):
        path = _copy(honest, folder)
        _edit(path, "UPDATE queries SET sample_index = -1 WHERE phase = 'estimation' AND sample_index = 29")
        return path

    @case("fractional_sample_index", INTEGRITY)
    def _(honest, folder):
        path = _copy(honest, folder)
        _edit(path, "UPDATE queries SET sample_index = 29.5 WHERE phase = 'estimation' AND sample_index = 29")
        return path

    @case("reused_flag_not_boolean", NOT_A_LOG)
    def _(honest, folder):
        path = _copy(honest, folder)
        _edit(path, "UPDATE queries SET reused = 7 WHERE sample_index = 3")
        return path

    @case("seed_as_text", NOT_A_LOG)
    def _(honest, folder):
        path = _copy(honest, folder)
        _edit(path, "UPDATE calls SET seed = 'three'")
        return path

    @case("seed_negative", NOT_A_LOG)
    def _(honest, folder):
        path = _copy(honest, folder)
        _edit(path, "UPDATE calls SET seed = -5")
        return path

    @case("noise_sd_infinite", NOT_A_LOG)
    def _(honest, folder):
        path = _copy(honest, folder)
        _edit(path, "UPDATE calls SET noise_sd = 9e999 WHERE kind = 'certify'")
        return path

    @case("unknown_call_kind", NOT_A_LOG)
    def _(honest, folder):
        path = _copy(honest, folder)
        _edit(path, "UPDATE calls SET kind = 'exec'")
        return path

    @case("unknown_call_status", NOT_A_LOG)
    def _(honest, folder):
        path = _copy(honest, folder)
        _edit(path, "UPDATE calls SET status = 'certified'")
        return path

    # (read call by call, the certify call has a gap: recertify reports it skipped, and goes on)
    @case("records_of_no_call", INTEGRITY, cli_recertify=None)
    def _(honest, folder):
        path = _copy(honest, folder)
        _edit(path, "UPDATE queries SET call_id = 99 WHERE phase = 'selection' AND sample_index = 0")
        return path

    @case("a_folder", NOT_A_LOG, analyze=FileNotFoundError)  # analyze(folder) reads the logs in it: none
    def _(honest, folder):
        path = folder / "log.sqlite3"
        path.mkdir()
        (path / "queries.sqlite3").mkdir()  # open_log(folder) looks inside: a folder there too
        return path

    @case("symlink_loop", NOT_A_LOG)
    def _(honest, folder):
        path = folder / "log.sqlite3"
        os.symlink(folder / "other.sqlite3", path)
        os.symlink(path, folder / "other.sqlite3")
        return path

    @case("broken_symlink", NOT_A_LOG)
    def _(honest, folder):
        path = folder / "log.sqlite3"
        os.symlink(folder / "nowhere.sqlite3", path)
        return path

    if hasattr(os, "mkfifo"):
        @case("fifo", NOT_A_LOG)
        def _(honest, folder):
            path = folder / "log.sqlite3"
            os.mkfifo(path)
            return path

    return cases


SQLITE_CASES = _sqlite_cases()
ENTRY_POINTS = ["open", "analyze", "cli-analyze", "cli-recertify", "writer"]


def _read_everything(path: Path) -> None:
    """open_log, then offline predict/certify of every call: what a user does with a log."""
    offline = RobustAPI("local", online=False)
    with open_log(path) as log:
        for call in log:
            if call.kind == "certify":
                offline.certify(call)
            else:
                offline.predict(call)


def _fingerprint(path: Path):
    """The bytes (or the kind) of what is at ``path``, and the folder's listing."""
    if path.is_symlink() or not path.exists():
        content = ("link", os.readlink(path)) if path.is_symlink() else None
    elif path.is_file():
        content = hashlib.sha256(path.read_bytes()).hexdigest()
    else:
        content = ("not a regular file", path.stat().st_mode)
    return content


class _Deadline:
    """Fail (instead of hanging) when an entry point blocks, e.g. on a FIFO."""

    def __enter__(self):
        if hasattr(signal, "SIGALRM"):
            def timeout(*_):
                raise TimeoutError("the entry point blocked for 20 s")
            self.previous = signal.signal(signal.SIGALRM, timeout)
            signal.alarm(20)
        return self

    def __exit__(self, *exc):
        if hasattr(signal, "SIGALRM"):
            signal.alarm(0)
            signal.signal(signal.SIGALRM, self.previous)


def _run_entry(entry: str, path: Path, capsys):
    """Run one entry point on ``path``; return the exception it raised (None when it passed)."""
    with _Deadline():
        if entry == "open":
            try:
                _read_everything(path)
            except Exception as exc:  # noqa: BLE001 - the caller checks its type
                return exc
            return None
        if entry == "analyze":
            try:
                robust_api.analyze(path)
            except Exception as exc:  # noqa: BLE001
                return exc
            return None
        if entry == "writer":
            counting = Counting()
            try:
                api = RobustAPI(counting, log=path, seed=0)
            except Exception as exc:  # noqa: BLE001
                assert counting.images == 0
                return exc
            api.log.close()
            return None
        command = entry.split("-", 1)[1]
        capsys.readouterr()
        status = main([command, str(path)])
        out, err = capsys.readouterr()
        if status == 0:
            return None
        assert status == 2, (status, err)
        assert "Traceback" not in err and err.startswith("robust-api: error: ") and err.count("\n") == 1, err
        return err


# values inside a well-formed log are checked when they are read: a writer may open such a file
_OPENABLE_BY_WRITERS = {
    "params_not_json", "params_nested_too_deep", "image_shape_not_a_list", "image_shape_huge", "raw_not_json",
    "label_stored_as_blob", "label_with_nul_byte_blob", "unknown_phase",
    "negative_sample_index", "fractional_sample_index", "reused_flag_not_boolean", "seed_as_text", "seed_negative",
    "noise_sd_infinite", "unknown_call_kind", "unknown_call_status", "records_of_no_call",
}


@pytest.mark.parametrize("name", sorted(SQLITE_CASES))
def test_hostile_sqlite_log_gives_its_typed_error_everywhere(name, honest, tmp_path, capsys):
    builder, expected, overrides = SQLITE_CASES[name]
    path = builder(honest, tmp_path)
    before = _fingerprint(path)
    for entry in ENTRY_POINTS:
        result = _run_entry(entry, path, capsys)
        wanted = None if entry == "writer" and name in _OPENABLE_BY_WRITERS else overrides.get(entry, expected)
        if wanted is None:
            assert result is None, f"{entry}: {result!r}"
        elif entry.startswith("cli-"):
            assert result is not None, f"{entry} accepted {name}"
        else:
            assert type(result) is wanted, f"{entry}: {result!r}"
            assert str(result)
        assert _fingerprint(path) == before, f"{entry} changed the file"
    if expected is UNTRUSTED:  # the message says what was found
        message = str(_run_entry("open", path, capsys))
        assert "not a robust_api query log as robust_api writes it" in message and "left untouched" in message


def test_untrusted_messages_name_the_problem(honest, tmp_path):
    cases = {
        "trigger_rewrites_labels": "trigger 'forge' on table 'queries': query logs never contain triggers",
        "view_of_fake_votes": "view 'queries': query logs never contain views",
        "extra_table": "table 'notes' is not part of a query log",
        "extra_index": "index 'by_label' on table 'queries' is not part of a query log",
        "missing_index": "index 'calls_by_image' is missing",
        "extra_column": "table 'queries' is not defined as robust_api defines it",
    }
    for number, (name, text) in enumerate(cases.items()):
        folder = tmp_path / str(number)
        folder.mkdir()
        path = SQLITE_CASES[name][0](honest, folder)
        with pytest.raises(UntrustedLogError) as excinfo:
            open_log(path)
        assert text in str(excinfo.value)
        assert isinstance(excinfo.value, NotAQueryLogError) and isinstance(excinfo.value, ValueError)


def test_a_trigger_never_runs_when_a_writer_is_given_the_file(honest, tmp_path):
    """The writer checks the schema read-only before it writes: the forging trigger never fires."""
    path = SQLITE_CASES["trigger_rewrites_labels"][0](honest, tmp_path)
    before = path.read_bytes()
    counting = Counting()
    with pytest.raises(UntrustedLogError, match="trigger 'forge'"):
        RobustAPI(counting, log=path, seed=0).certify(IMAGE, noise_sd=0.25, N0=5, N=30)
    assert counting.images == 0 and path.read_bytes() == before
    assert not Path(f"{path}-journal").exists()


def test_the_honest_log_passes_every_entry_point(honest, tmp_path, capsys):
    """The corpus is made from this file: it must pass, or the cases above prove nothing."""
    path = _copy(honest, tmp_path)
    for entry in ENTRY_POINTS:
        assert _run_entry(entry, path, capsys) is None, entry


# -- exports --------------------------------------------------------------------------------


def _jsonl_lines(honest: Path) -> list[dict]:
    out = honest.parent / "honest_export.jsonl"
    if not out.exists():
        with open_log(honest) as log:
            export_jsonl(log, out)
    return [json.loads(line) for line in out.read_text().splitlines()]


def _first(lines, line_type, **match):
    return next(line for line in lines if line["type"] == line_type and all(line.get(k) == v for k, v in match.items()))


def _jsonl_cases():
    def set_field(kind, field, value, **match):
        def edit(lines):
            _first(lines, kind, **match)[field] = value
            return lines
        return edit

    def drop_field(kind, field):
        def edit(lines):
            del _first(lines, kind)[field]
            return lines
        return edit

    def duplicate_query(lines):
        query = _first(lines, "query", phase="estimation")
        return lines + [dict(query, label="A")]

    def duplicate_call(lines):
        call = _first(lines, "call", kind="certify")
        return lines + [dict(call)]

    def query_first(lines):
        query = _first(lines, "query")
        return [lines[0], query] + lines[1:]

    return {
        "label_as_number": (set_field("query", "label", 3), NOT_A_LOG),
        "sample_index_as_text": (set_field("query", "sample_index", "3"), INTEGRITY),
        "sample_index_as_bool": (set_field("query", "sample_index", True), INTEGRITY),
        "negative_sample_index": (set_field("query", "sample_index", -4), INTEGRITY),
        "phase_unknown": (set_field("query", "phase", "final"), NOT_A_LOG),
        "reused_as_text": (set_field("query", "reused", "no"), NOT_A_LOG),
        "seed_as_text": (set_field("call", "seed", "3"), NOT_A_LOG),
        "seed_too_large": (set_field("call", "seed", 2**64), NOT_A_LOG),
        "noise_sd_nan": (set_field("call", "noise_sd", float("nan")), NOT_A_LOG),
        "image_shape_as_text": (set_field("call", "image_shape", "8x8"), NOT_A_LOG),
        "params_as_list": (set_field("call", "params", [1, 2]), NOT_A_LOG),
        "kind_unknown": (set_field("call", "kind", "exec"), NOT_A_LOG),
        "missing_query_key": (drop_field("query", "label"), NOT_A_LOG),
        "missing_call_key": (drop_field("call", "seed"), NOT_A_LOG),
        "duplicated_index": (duplicate_query, INTEGRITY),
        "call_listed_twice": (duplicate_call, INTEGRITY),
        "query_before_its_call": (query_first, NOT_A_LOG),
        "unknown_line_type": (lambda lines: lines + [{"type": "exec", "code": "print(1)"}], NOT_A_LOG),
        "future_format_version": (lambda lines: [dict(lines[0], format_version=99)] + lines[1:], NOT_A_LOG),
        "format_version_as_text": (lambda lines: [dict(lines[0], format_version="1")] + lines[1:], NOT_A_LOG),
    }


JSONL_CASES = _jsonl_cases()
RAW_JSONL_CASES = {  # bytes that are not JSON lines at all
    "bad_json_line": (lambda text: text + b"{not json\n", NOT_A_LOG),
    "array_line": (lambda text: text + b"[1, 2, 3]\n", NOT_A_LOG),
    "invalid_utf8": (lambda text: text + b'{"type": "query", "label": "\xff\xfe"}\n', NOT_A_LOG),
    "deeply_nested_raw": (lambda text: text + b'{"type": "query", "raw": ' + b"[" * 100000 + b"]" * 100000 + b"}\n",
                          NOT_A_LOG),
    "nul_bytes": (lambda text: b"\x00" * 4096, NOT_A_LOG),
    "empty_file": (lambda text: b"", NOT_A_LOG),
}


def _jsonl_entry_checks(path: Path, expected, capsys) -> None:
    before = _fingerprint(path)
    for entry in ("open", "analyze", "cli-analyze", "cli-recertify"):
        result = _run_entry(entry, path, capsys)
        if entry.startswith("cli-"):
            assert result is not None
        else:
            assert type(result) is expected, f"{entry}: {result!r}"
        assert _fingerprint(path) == before


@pytest.mark.parametrize("name", sorted(JSONL_CASES))
def test_hostile_jsonl_export(name, honest, tmp_path, capsys):
    edit, expected = JSONL_CASES[name]
    path = tmp_path / "log.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in edit(_jsonl_lines(honest))))
    _jsonl_entry_checks(path, expected, capsys)


@pytest.mark.parametrize("name", sorted(RAW_JSONL_CASES))
def test_broken_jsonl_bytes(name, honest, tmp_path, capsys):
    edit, expected = RAW_JSONL_CASES[name]
    path = tmp_path / "log.jsonl"
    path.write_bytes(edit("".join(json.dumps(line) + "\n" for line in _jsonl_lines(honest)).encode()))
    _jsonl_entry_checks(path, expected, capsys)


def test_overlong_jsonl_line_is_refused_before_it_is_read_whole(honest, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(exchange, "MAX_JSONL_LINE_BYTES", 1 << 20)  # the cap is 64 MiB; 1 MiB keeps the test light
    path = tmp_path / "log.jsonl"
    text = "".join(json.dumps(line) + "\n" for line in _jsonl_lines(honest))
    path.write_text(text + json.dumps({"type": "query", "raw": "x" * (2 << 20)}) + "\n")
    with pytest.raises(NotAQueryLogError, match="a line longer than 1,048,576 bytes"):
        open_log(path)
    _jsonl_entry_checks(path, NOT_A_LOG, capsys)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
@pytest.mark.parametrize("suffix", ["jsonl", "parquet"])
def test_export_path_that_is_a_fifo_is_refused_without_blocking(suffix, tmp_path, capsys):
    path = tmp_path / f"log.{suffix}"
    os.mkfifo(path)
    _jsonl_entry_checks(path, NOT_A_LOG, capsys)


def test_export_path_that_is_a_folder(tmp_path):
    """(open_log(folder) looks for queries.sqlite3 in it; the importers take files only.)"""
    for importer, suffix in ((exchange.import_jsonl, "jsonl"), (exchange.import_parquet, "parquet")):
        path = tmp_path / f"log.{suffix}"
        path.mkdir()
        if suffix == "parquet":
            pytest.importorskip("pyarrow")
        with pytest.raises(NotAQueryLogError, match="is a folder"):
            importer(path)


def _parquet_cases():
    pa = pytest.importorskip("pyarrow")

    def rewrite(column, function):
        def edit(table):
            index = table.column_names.index(column)
            values = [function(value) for value in table.column(column).to_pylist()]
            return table.set_column(index, column, pa.array(values))
        return edit

    def duplicate_row(table):
        return pa.concat_tables([table, table.slice(table.num_rows - 1, 1)])

    def mixed_headers(table):
        seeds = table.column("seed").to_pylist()
        run_ids = table.column("run_id").to_pylist()
        last = run_ids[-1]
        seeds = [seed if run_id != last or number % 2 else "99" for number, (seed, run_id) in
                 enumerate(zip(seeds, run_ids))]
        return table.set_column(table.column_names.index("seed"), "seed", pa.array(seeds))

    return {
        "garbage": (None, NOT_A_LOG),
        "missing_column": (lambda table: table.drop_columns(["label"]), NOT_A_LOG),
        "sample_index_as_text": (rewrite("sample_index", lambda v: None if v is None else str(v)), INTEGRITY),
        "label_as_number": (rewrite("label", lambda v: None if v is None else 1.5), NOT_A_LOG),
        "params_not_json": (rewrite("params", lambda v: "{oops"), NOT_A_LOG),
        "seed_not_decimal": (rewrite("seed", lambda v: "0x10"), NOT_A_LOG),
        "duplicated_row": (duplicate_row, INTEGRITY),
        "rows_disagree_about_their_call": (mixed_headers, INTEGRITY),
        "future_format_version": ("version", NOT_A_LOG),
    }


@pytest.mark.parametrize("name", ["garbage", "missing_column", "sample_index_as_text", "label_as_number",
                                  "params_not_json", "seed_not_decimal", "duplicated_row",
                                  "rows_disagree_about_their_call", "future_format_version"])
def test_hostile_parquet_export(name, honest, tmp_path, capsys):
    cases = _parquet_cases()
    import pyarrow.parquet as pq

    edit, expected = cases[name]
    path = tmp_path / "log.parquet"
    if edit is None:
        path.write_bytes(b"PAR1" + b"\x00" * 100)
    else:
        with open_log(honest) as log:
            export_parquet(log, path)
        table = pq.read_table(path)
        metadata = table.schema.metadata
        if edit == "version":
            table = table.replace_schema_metadata({**metadata, b"format_version": b"99"})
        else:
            table = edit(table).replace_schema_metadata(metadata)
        pq.write_table(table, path)
    _jsonl_entry_checks(path, expected, capsys)


# -- access problems --------------------------------------------------------------------------


def test_permission_denied_is_a_log_access_error(honest, tmp_path, monkeypatch):
    """(Simulated: the tests may run as root, whom no permission stops.)"""
    path = _copy(honest, tmp_path)
    real_open = os.open

    def refuse(target, *args, **kwargs):
        if os.fspath(target) == os.fspath(path):
            raise PermissionError(13, "Permission denied", os.fspath(target))
        return real_open(target, *args, **kwargs)

    monkeypatch.setattr(opening.os, "open", refuse)
    for reader in (open_log, lambda p: RobustAPI(Counting(), log=p)):
        with pytest.raises(LogAccessError, match="permission denied") as excinfo:
            reader(path)
        assert isinstance(excinfo.value, OSError)


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root reads any file")
def test_unreadable_file_is_a_log_access_error(honest, tmp_path):
    path = _copy(honest, tmp_path)
    path.chmod(0)
    try:
        with pytest.raises(LogAccessError):
            open_log(path)
    finally:
        path.chmod(0o644)


def test_writing_through_open_log_is_refused(honest, tmp_path):
    path = _copy(honest, tmp_path)
    before = path.read_bytes()
    with open_log(path) as log:
        call = next(iter(log))
        for write in (lambda: log.begin_call(call.header), lambda: log.append(call.run_id, call.records),
                      lambda: log.finish_call(call.run_id, "failed")):
            with pytest.raises(LogAccessError, match="opened read-only"):
                write()
    assert path.read_bytes() == before


def test_cli_prints_one_line_without_traceback(honest, tmp_path):
    """The installed command, in a process of its own, on a forged log and on a FIFO."""
    forged = SQLITE_CASES["view_of_fake_votes"][0](honest, tmp_path)
    for command in ("analyze", "recertify"):
        result = subprocess.run([sys.executable, "-m", "robust_api", command, str(forged)], cwd=REPO,
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 2, result
        assert result.stderr.startswith("robust-api: error: ") and result.stderr.count("\n") == 1, result.stderr
        assert "view 'queries'" in result.stderr and "Traceback" not in result.stderr
