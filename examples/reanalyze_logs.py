"""Re-analyse recorded query logs offline: certified accuracy per radius, as in the papers' tables.

Shows ``robust_api.analyze``: every certify call in the logs is re-certified from its logged
answers (no provider, SDK, denoiser, GPU or network; not a single query is sent), the
certificates are grouped by provider, denoiser, σ and method, and each group gets its
certified accuracy at each radius, average certified radius (ACR), abstention rate, queries
and dollars. The ground truth is either the true labels of a CSV (``--labels``) or, by
default, the provider's own label on the clean image (the denoised-smoothing paper's
convention; the sample logs hold one clean query per image).

Sources are log files (SQLite, ``.jsonl`` / ``.parquet`` exports, the predecessor's ``.tsv``)
or folders, of which every such file is read. The default is ``query_logs/``: the sample logs
recorded by ``examples/record_sample_log.py`` (see ``query_logs/README.md``), plus
``queries.sqlite3`` if your own runs left one there.

Run from the repository root:

    python examples/reanalyze_logs.py                                           # query_logs/, clean-label truth
    python examples/reanalyze_logs.py --labels examples/images/LABELS.csv       # true labels
    python examples/reanalyze_logs.py --radii 0,0.1,0.2,0.3 --plot accuracy.png
    python examples/reanalyze_logs.py query_logs/google_emulator_dncnn_0.25_seed0.jsonl --format json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional, Sequence

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run from a checkout without `pip install`
    sys.path.insert(0, str(ROOT))

import robust_api  # noqa: E402

def _radii(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"radii must be comma-separated numbers, got {text!r}") from None


def _fields(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Re-analyse query logs offline (certified accuracy per radius).")
    parser.add_argument("logs", nargs="*", type=Path, default=[ROOT / "query_logs"],
                        help="log files or folders (default: query_logs/)")
    parser.add_argument("--labels", type=Path, default=None,
                        help="CSV of true labels: a 'file' or 'image_digest' column and 'class_name' or 'label' "
                             "(e.g. examples/images/LABELS.csv)")
    parser.add_argument("--truth", choices=("labels", "clean"), default=None,
                        help="compare with the CSV's labels (default with --labels) or with the provider's "
                             "label on the clean image (default otherwise)")
    parser.add_argument("--radii", type=_radii, default=(0.0, 0.25, 0.5, 0.75, 1.0),
                        help="comma-separated radii of the accuracy columns (default 0,0.25,0.5,0.75,1)")
    parser.add_argument("--by", type=_fields, default=None,
                        help="comma-separated fields to group by (default: provider, denoiser, σ, method, ...)")
    parser.add_argument("--alpha", type=float, default=None,
                        help="re-certify at this α instead of each call's logged α (choose it before looking)")
    parser.add_argument("--plot", type=Path, default=None, help="save the accuracy-vs-radius plot (PNG, PDF, SVG)")
    parser.add_argument("--format", choices=("table", "csv", "json"), default="table")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    options = {"radii": args.radii, "truth": args.truth, "alpha": args.alpha}
    if args.by:
        options["by"] = args.by
    if args.labels is not None:
        options["labels"] = args.labels
    try:
        # a folder stands for every log and TSV directly in it
        report = robust_api.analyze([str(path) for path in args.logs], **options)
    except (robust_api.RobustAPIError, FileNotFoundError) as exc:
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    if args.format == "table":
        sources = sorted({Path(row.source).name for row in report.rows})
        print(f"{len(report.rows)} certified images from {len(sources)} log(s): " + ", ".join(sources))
        print(report.table())
    elif args.format == "csv":
        print(report.to_csv(), end="")
    else:
        print(json.dumps(report.to_json(), indent=2))
    if args.plot is not None:
        report.plot(args.plot)
        print(f"saved the plot to {args.plot}", file=sys.stderr if args.format != "table" else sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
