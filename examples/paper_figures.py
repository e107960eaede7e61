"""Paper-ready output from recorded query logs: a vector figure, a LaTeX table, an HTML report.

Re-certifies the certify calls of the logs offline (``robust_api.analyze``; no query is
sent, no provider, SDK, denoiser or GPU is needed) and writes:

- ``certified_accuracy.svg``: certified accuracy against the L2 radius, one curve per
  setting, named in words ("Google (emulator), DnCNN σ=0.25, Cohen N=100"); a sequential
  curve ends at its target radius. ``--format pdf`` writes a PDF instead. The file carries no
  date, so rerunning the script on the same logs (and matplotlib) rewrites the same bytes;
- ``certified_accuracy.tex``: the certified-accuracy table as a booktabs ``tabular``
  (``\\usepackage{booktabs}``), also printed;
- with ``--html PATH``: a self-contained HTML report with a thumbnail of every image found
  in ``--images`` (matched by the digest the log holds).

The defaults reproduce the figure and table of docs/analysis.md from the repository's sample
logs (``query_logs/*.jsonl``, see query_logs/README.md) and their true labels. Run from the
repository root (needs matplotlib: ``pip install '.[plot]'``):

    python examples/paper_figures.py                                # docs/img/certified_accuracy.{svg,tex}
    python examples/paper_figures.py --out figures --format pdf --html figures/report.html
    python examples/paper_figures.py my_run.sqlite3 --labels labels.csv --radii 0,0.5,1 --out figures
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run from a checkout without `pip install`
    sys.path.insert(0, str(ROOT))

import robust_api  # noqa: E402
from robust_api.analysis import check_plot_path  # noqa: E402

SAMPLE_LOGS = sorted((ROOT / "query_logs").glob("*.jsonl"))
DEFAULT_RADII = (0.0, 0.125, 0.25, 0.375, 0.5)


def _radii(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"radii must be comma-separated numbers, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Write a certified-accuracy figure, a LaTeX table and an HTML "
                                                 "report from query logs (offline).")
    parser.add_argument("logs", nargs="*", type=Path, default=SAMPLE_LOGS,
                        help="log files or folders (default: the sample logs query_logs/*.jsonl)")
    parser.add_argument("--labels", type=Path, default=ROOT / "examples" / "images" / "LABELS.csv",
                        help="CSV of true labels (default examples/images/LABELS.csv); 'none' for the provider's "
                             "clean-image labels")
    parser.add_argument("--radii", type=_radii, default=DEFAULT_RADII,
                        help="comma-separated radii of the table's columns (default 0,0.125,0.25,0.375,0.5)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "img",
                        help="folder for certified_accuracy.svg/.pdf and certified_accuracy.tex (default docs/img)")
    parser.add_argument("--format", choices=("svg", "pdf", "png"), default="svg", help="figure format (default svg)")
    parser.add_argument("--html", type=Path, default=None, help="also write an HTML report there")
    parser.add_argument("--images", type=Path, default=ROOT / "examples" / "images",
                        help="folder with the image files, for the HTML report's thumbnails (default examples/images)")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    figure = args.out / f"certified_accuracy.{args.format}"
    labels = None if str(args.labels).lower() == "none" else args.labels
    try:
        check_plot_path(figure)  # a missing matplotlib is said before the analysis runs
        report = robust_api.analyze([str(path) for path in args.logs], labels=labels, radii=args.radii)
    except (robust_api.RobustAPIError, FileNotFoundError) as exc:
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    report.plot(figure, title="")  # the caption says what the ground truth is
    table = report.to_latex(args.out / "certified_accuracy.tex")
    print(table, end="")
    print(f"wrote {figure} and {args.out / 'certified_accuracy.tex'}", file=sys.stderr)
    if args.html is not None:
        args.html.parent.mkdir(parents=True, exist_ok=True)
        report.to_html(args.html, images=args.images if args.images.is_dir() else None,
                       title="Certified accuracy of the sample logs" if args.logs == SAMPLE_LOGS else None)
        print(f"wrote {args.html}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
