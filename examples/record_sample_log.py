"""Record the sample query logs shipped in query_logs/ (first 10 example images, seed 0).

Shows how a log is recorded once, online, and exported to a replayable JSONL file that
anyone can re-certify offline later (``robust_api.open_log`` + ``RobustAPI(..., online=False)``)
without an account or a single paid query. Three logs can be written (``--only``, repeatable;
default: all three):

* ``local`` → ``query_logs/fashion_mnist_local_seed0.jsonl``: the bundled Fashion-MNIST CNN, no
  denoiser. Per image one clean predict call (N=1, noise_sd=0) and certify calls at
  noise_sd 0.12 and 0.25 (N0=20, N=100, alpha=0.001).
* ``google`` → ``query_logs/google_emulator_dncnn_0.25_seed0.jsonl``: the Google Cloud Vision
  adapter (official SDK, REST) against the local Google emulator, behind the shipped
  ``fashion-mnist-dncnn-0.25`` denoiser. Per image one clean predict call (N=1,
  noise_sd=0) and one certify call at σ=0.25 (N0=20, N=100, alpha=0.001).
* ``google-sequential`` → ``query_logs/google_emulator_dncnn_0.25_sequential_seed0.jsonl``:
  the same set-up, one ``method="sequential", radius=0.25, N=400`` certify call per image
  (alpha=0.001; clean selection, the sequential default). The same calls made with the first
  sequential rule (a confidence sequence) stay as they were recorded in
  ``query_logs/legacy/google_emulator_dncnn_0.25_sequential_confidence_sequence_seed0.jsonl``.

The Google logs ask for ``--max-labels`` labels per image (default 3) so that the raw
responses kept in the log stay small (each file well under 1 MB); the vote only uses the top
label. Nothing here needs credentials, a GPU or the network.

Run from the repository root:

    python examples/record_sample_log.py                         # all three logs
    python examples/record_sample_log.py --only google --only google-sequential
    python examples/record_sample_log.py --only google --images 2 --out-dir /tmp/logs
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path
from typing import Optional, Sequence

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run from a checkout without `pip install`
    sys.path.insert(0, str(ROOT))

from robust_api import RobustAPI, export_jsonl  # noqa: E402

DENOISER = "fashion-mnist-dncnn-0.25"
LOGS = {
    "local": "fashion_mnist_local_seed0.jsonl",
    "google": "google_emulator_dncnn_0.25_seed0.jsonl",
    "google-sequential": "google_emulator_dncnn_0.25_sequential_seed0.jsonl",
}


def _record_local(images: Sequence[Path]) -> RobustAPI:
    api = RobustAPI("local", log=False, seed=0, device="cpu")
    for path in images:
        api.predict(path, N=1, noise_sd=0)
        for noise_sd in (0.12, 0.25):
            api.certify(path, noise_sd=noise_sd, N0=20, N=100, alpha=0.001)
    return api


def _record_google(images: Sequence[Path], endpoint: str, sequential: bool, max_labels: int) -> RobustAPI:
    api = RobustAPI("google", denoiser=DENOISER, endpoint=endpoint, log=False, seed=0, device="cpu",
                    max_labels=max_labels, progress=False)
    try:
        for path in images:  # one image after the other: the log's call order is the image order
            if sequential:
                api.certify(path, noise_sd=0.25, N=400, alpha=0.001, method="sequential", radius=0.25)
            else:
                api.predict(path, N=1, noise_sd=0)
                api.certify(path, noise_sd=0.25, N0=20, N=100, alpha=0.001)
    finally:
        api.close()
    return api


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Record the sample query logs of query_logs/.")
    parser.add_argument("--only", action="append", choices=sorted(LOGS), default=None,
                        help="which log to write (repeatable; default: all)")
    parser.add_argument("--images", type=int, default=10, help="the first N images of examples/images (default 10)")
    parser.add_argument("--out-dir", type=Path, default=ROOT / "query_logs", help="where to write (default query_logs/)")
    parser.add_argument("--max-labels", type=int, default=3,
                        help="labels asked from Google per image (keeps the log small; default 3)")
    parser.add_argument("--port", type=int, default=0, help="the Google emulator's port (default: a free one)")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.images < 1:
        print("--images must be at least 1", file=sys.stderr)
        return 2
    images = sorted((ROOT / "examples" / "images").glob("*.png"))[: args.images]
    args.out_dir.mkdir(parents=True, exist_ok=True)
    chosen = [name for name in LOGS if name in (args.only or LOGS)]
    with contextlib.ExitStack() as stack:
        endpoint = None
        if any(name.startswith("google") for name in chosen):
            from robust_api.emulators import emulate

            # one emulator for both Google logs: the provider id ("google:label_detection@host:port")
            # names the endpoint, so both logs then name the same provider
            endpoint = str(stack.enter_context(emulate("google", port=args.port)))
            print(f"Google emulator at {endpoint} (no account needed)")
        for which in chosen:
            _write(which, images, endpoint, args)
    return 0


def _write(which: str, images: Sequence[Path], endpoint: Optional[str], args: argparse.Namespace) -> None:
    if which == "local":
        api = _record_local(images)
    else:
        api = _record_google(images, endpoint, sequential=which == "google-sequential", max_labels=args.max_labels)
    out = args.out_dir / LOGS[which]
    count = export_jsonl(api.log, out)
    size = out.stat().st_size
    shown = out.resolve().relative_to(ROOT) if out.resolve().is_relative_to(ROOT) else out
    print(f"wrote {count} calls ({api.spent.queries} queries, {size / 1e6:.2f} MB) to {shown}")
    if size > 1_000_000:
        hint = "--images" if which == "local" else "--max-labels or --images"
        print(f"note: {shown} is over 1 MB; lower {hint} for a smaller file", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
