"""Certify every image in a folder with a cloud vision API (or its local emulator).

Shows the cloud workflow end to end: build ``RobustAPI("google" | "aws" | "azure" | "clarifai" |
"http", denoiser=..., endpoint=...)``, certify all images at once with ``certify_many`` (several
images in flight, under the provider's concurrency and rate limit), record each image's clean
label with one clean query (``api.predict(img, N=1, noise_sd=0)``), and print one row per image
and what was spent (``api.spent``, queries and list price in USD).

Without ``--endpoint`` and without the provider's credentials in the environment (its
variables, see ``CREDENTIAL_VARIABLES``, or gcloud's / AWS's credentials file), the
provider's local emulator (``robust_api.emulators.emulate``) is started and used instead: it
speaks the provider's wire protocol, so the official SDK is exercised, and it answers with the
bundled Fashion-MNIST classifier. No account, GPU or network is needed. With credentials (for
example ``GOOGLE_APPLICATION_CREDENTIALS`` or ``GOOGLE_API_KEY``) the real service is queried
and billed: set ``--max-cost`` first.

Run from the repository root:

    python examples/certify_folder.py                                # 30 images, Google emulator
    python examples/certify_folder.py --provider aws --limit 5       # Rekognition's emulator (min side 80 px: resize="fit")
    python examples/certify_folder.py my_images/ --provider google --max-cost 2 --log runs/google.sqlite3
    python examples/certify_folder.py --endpoint http://127.0.0.1:8080   # a server you started (robust-api emulate google)

True labels are read from ``LABELS.csv`` in the folder when there is one (columns ``file`` and
``label`` or ``class_name``; ``examples/images`` has one). The log goes to ``--log`` (default
the user's data directory, see ``robust_api.query_logs.default_log_path()``). An emulator's answers are logged under its endpoint
(``google:label_detection@127.0.0.1:PORT``) and never reused as the real service's; pass
``--emulator-port`` to keep the same port, so that a second run with the same ``--seed`` and
``--log`` reuses every logged answer and sends no query.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import os
import sys
from pathlib import Path
from typing import Any, Optional, Sequence
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run from a checkout without `pip install`
    sys.path.insert(0, str(ROOT))

import robust_api  # noqa: E402
from robust_api import ABSTAIN, RobustAPI  # noqa: E402

PROVIDERS = ("google", "aws", "azure", "clarifai", "http")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}

#: For each provider, sets of environment variables; credentials count as present when every
#: variable of one set is non-empty (the variables each adapter reads, see the README).
CREDENTIAL_VARIABLES = {
    "google": (("GOOGLE_APPLICATION_CREDENTIALS",), ("GOOGLE_API_KEY",)),
    "aws": (("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"), ("AWS_PROFILE",)),
    "azure": (("AZURE_COMPUTER_VISION_SUBSCRIPTION_KEY", "AZURE_COMPUTER_VISION_ENDPOINT"),),
    "clarifai": (("CLARIFAI_PAT",), ("CLARIFAI_API_KEY",)),
    "http": (("ROBUST_API_HTTP_URL",),),
}
#: Environment variables that point a provider at another endpoint (an emulator you started).
ENDPOINT_VARIABLES = {
    "google": ("ROBUST_API_GOOGLE_ENDPOINT",),
    "aws": ("ROBUST_API_AWS_ENDPOINT", "AWS_ENDPOINT_URL_REKOGNITION"),
    "azure": (),
    "clarifai": ("ROBUST_API_CLARIFAI_ENDPOINT",),
    "http": (),
}
#: Placeholder credentials for a local emulator (any non-empty value is accepted there).
EMULATOR_CREDENTIALS = {
    "google": {},
    "aws": {"aws_access_key_id": "emulator", "aws_secret_access_key": "emulator", "region_name": "us-east-1"},
    "azure": {"subscription_key": "emulator"},
    "clarifai": {"pat": "emulator"},
    "http": {},
}


def _credential_files(provider: str) -> list[Path]:
    """Files where the SDK finds credentials without any variable set (gcloud's and AWS's)."""
    home = Path.home()
    if provider == "google":  # `gcloud auth application-default login`
        config = os.environ.get("CLOUDSDK_CONFIG") or home / ".config" / "gcloud"
        return [Path(config) / "application_default_credentials.json"]
    if provider == "aws":
        return [Path(os.environ.get("AWS_SHARED_CREDENTIALS_FILE") or home / ".aws" / "credentials")]
    return []


def credentials_in_environment(provider: str) -> bool:
    """True when one complete set of the provider's credential variables is set, or its SDK's
    credentials file exists."""
    if any(all(os.environ.get(name, "").strip() for name in group) for group in CREDENTIAL_VARIABLES[provider]):
        return True
    return any(path.is_file() for path in _credential_files(provider))


def _endpoint_in_environment(provider: str) -> Optional[str]:
    for name in ENDPOINT_VARIABLES[provider]:
        if os.environ.get(name, "").strip():
            return os.environ[name].strip()
    return None


def _is_loopback(url: str) -> bool:
    host = urlsplit(url if "://" in url else f"//{url}").hostname or ""
    return host in ("127.0.0.1", "::1", "localhost")


def read_labels(folder: Path) -> dict[str, str]:
    """{file name: true class name} from ``folder/LABELS.csv`` if it exists, else {}."""
    path = folder / "LABELS.csv"
    if not path.is_file():
        return {}
    from robust_api.datasets import FASHION_MNIST_CLASSES

    labels = {}
    with open(path, newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            name = row.get("class_name") or row.get("label")
            if name is None or "file" not in row:
                continue
            if name.isdigit() and int(name) < len(FASHION_MNIST_CLASSES):  # Fashion-MNIST class index
                name = FASHION_MNIST_CLASSES[int(name)]
            labels[Path(row["file"]).name] = name
    return labels


def _text(label: Any) -> str:
    return "ABSTAIN" if label is ABSTAIN else str(label)


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [list(map(str, headers))] + [list(map(str, row)) for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Certify every image in a folder with a cloud vision API.")
    parser.add_argument("folder", nargs="?", type=Path, default=ROOT / "examples" / "images",
                        help="folder of images (default: examples/images, 30 Fashion-MNIST test images)")
    parser.add_argument("--provider", choices=PROVIDERS, default="google")
    parser.add_argument("--endpoint", default=None,
                        help="a server speaking the provider's protocol (default: the real service when its "
                             "credentials are set, else the provider's local emulator)")
    parser.add_argument("--emulate", action="store_true", help="use the local emulator even when credentials are set")
    parser.add_argument("--emulator-port", type=int, default=0, help="port of the started emulator (default: a free one)")
    parser.add_argument("--denoiser", default="fashion-mnist-dncnn-0.25",
                        help="shipped denoiser name or file, or 'none' (default: fashion-mnist-dncnn-0.25)")
    parser.add_argument("--noise-sd", type=float, default=0.25)
    parser.add_argument("--N0", type=int, default=20)
    parser.add_argument("--N", type=int, default=100)
    parser.add_argument("--alpha", type=float, default=0.001)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--log", default=None, help="query log file or folder (default: in the user's data directory); 'memory' keeps none")
    parser.add_argument("--max-cost", type=float, default=None, help="stop before spending more than this many USD")
    parser.add_argument("--max-queries", type=int, default=None)
    parser.add_argument("--concurrency", type=int, default=None, help="requests in flight (default: the provider's)")
    parser.add_argument("--rate-limit", type=float, default=None, help="requests per second (default: the provider's quota)")
    parser.add_argument("--resize", choices=("fit", "none"), default="fit",
                        help="'fit' scales query images into the provider's size limits (AWS and Azure need "
                             "sides ≥ 80 / 50 px; the Fashion-MNIST images are 28 px); default fit")
    parser.add_argument("--limit", type=int, default=None, help="only the first LIMIT images (sorted by name)")
    parser.add_argument("--no-clean", action="store_true", help="skip the clean query per image")
    parser.add_argument("--device", default=None, help="torch device of the denoiser (default: CUDA if available)")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.folder.is_dir():
        print(f"error: {args.folder} is not a folder", file=sys.stderr)
        return 2
    images = sorted(p for p in args.folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if args.limit is not None:
        images = images[: max(args.limit, 0)]
    if not images:
        print(f"error: no images (.png, .jpg, …) in {args.folder}", file=sys.stderr)
        return 2
    truth = read_labels(args.folder)

    with contextlib.ExitStack() as stack:
        endpoint = args.endpoint
        options: dict[str, Any] = {}
        emulated = False
        if endpoint is None and (args.emulate or not (credentials_in_environment(args.provider)
                                                     or _endpoint_in_environment(args.provider))):
            from robust_api.emulators import emulate

            endpoint = str(stack.enter_context(emulate(args.provider, port=args.emulator_port)))
            emulated = True
            reason = "--emulate" if args.emulate else f"no {args.provider} credentials in the environment"
            print(f"{reason}: using the local {args.provider} emulator at {endpoint} (no account, nothing billed)")
        if endpoint is not None:
            options["endpoint"] = endpoint
            if (emulated or _is_loopback(endpoint)) and not credentials_in_environment(args.provider):
                options.update(EMULATOR_CREDENTIALS[args.provider])
        if args.resize == "fit":
            options["resize"] = "fit"
        log: Any = False if args.log == "memory" else args.log
        try:
            api = RobustAPI(
                args.provider,
                denoiser=None if args.denoiser.lower() == "none" else args.denoiser,
                log=log,
                seed=args.seed,
                device=args.device,
                max_cost_usd=args.max_cost,
                max_queries=args.max_queries,
                concurrency=args.concurrency,
                rate_limit=args.rate_limit,
                progress=False,
                **options,
            )
            stack.callback(api.close)
            print(f"certifying {len(images)} images with {api.provider.identity}, denoiser {args.denoiser}, "
                  f"noise_sd={args.noise_sd}, N0={args.N0}, N={args.N}, alpha={args.alpha}, seed={args.seed}")
            certificates = api.certify_many(images, noise_sd=args.noise_sd, N0=args.N0, N=args.N, alpha=args.alpha)
            clean = [None if args.no_clean else api.predict(path, N=1, noise_sd=0).label for path in images]
        except robust_api.RobustAPIError as exc:
            print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
            return 2

    rows = []
    for path, cert, clean_label in zip(images, certificates, clean):
        rows.append([
            path.name, truth.get(path.name, "-"), "-" if clean_label is None else _text(clean_label),
            _text(cert.label), f"{cert.radius:.3f}", f"{cert.p_lower:.3f}", cert.queries, cert.errors,
        ])
    print(_table(["image", "true", "clean", "certified", "radius", "p_lower", "queries", "errors"], rows))

    answered = [c for c in certificates if c.label is not ABSTAIN]
    print(f"certified {len(answered)}/{len(images)} (the rest abstained)", end="")
    labelled = [(path, c) for path, c in zip(images, certificates) if path.name in truth]
    if labelled:
        correct = [c for path, c in labelled if c.label is not ABSTAIN and c.label == truth[path.name]]
        robust = [c for c in correct if c.radius >= args.noise_sd]
        print(f"; correct {len(correct)}/{len(labelled)}, {len(robust)} of them with radius >= {args.noise_sd}", end="")
    if not args.no_clean:
        agree = sum(c.label is not ABSTAIN and c.label == label for c, label in zip(certificates, clean))
        print(f"; {agree}/{len(images)} agree with the clean label", end="")
    print()
    spent = api.spent
    print(f"spent: {spent.queries} queries, ${spent.cost_usd:.4f} at list price"
          + (" (emulator: nothing billed)" if emulated else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
