"""The paper's Figure 6 on this machine: certified accuracy of an ImageNet classifier on natural
photos, without and with denoisers (Salman et al. 2020, "Denoised Smoothing", Fig. 6).

The black box is ``efficientnet-lite2`` (``RobustAPI("local", model="efficientnet-lite2")``),
the photos are the 224² evaluation crops of the test split of the Debian photos
(``robust_api.denoisers.photos.evaluation_crops("test")``: 5 views of each of 13 photos). For
every denoiser and σ it measures, through the SDK's own path:

1. **Certified accuracy against the L2 radius.** Each crop is certified with
   ``RobustAPI(...).certify(crop, noise_sd=σ, N0=20, N=100, alpha=0.001, seed=0)`` (Cohen et
   al.'s CERTIFY: noisy copies x + σz, the denoiser on them unclipped, its output clipped to
   [0, 1], the classifier's votes); a crop counts at radius r when the certified label equals
   the classifier's own answer on the clean crop (``RobustAPI.predict(crop, N=1, noise_sd=0)``)
   with radius ≥ r: the paper's convention, the API's clean answer as ground truth.
2. **PSNR** (dB, peak 1) of each denoiser on the same crops, one seeded noise draw, the noisy
   copy unclipped as the SDK gives it (the "none" row: the clipped noisy copy itself).
3. **Throughput** of denoise + classify: noisy 224² copies per second through the SDK's
   components (``ModuleDenoiser`` fp32, then ``LocalProvider.send`` with lite2), batches of 20,
   ``--threads`` CPU threads (default 2), median of 3 timed runs after a warm-up; on the GPU
   too when ``torch.cuda.is_available()``.

Rows: ``none`` (the classifier alone), ``nl-means`` (classical), ``ffdnet`` (FFDNet's published
weights, when the optional GPL ``ffdnet`` package is installed; otherwise skipped with a note),
then every ``--denoiser LABEL=NAME_OR_PATH``. NAME_OR_PATH is a shipped name
(``robust_api.denoisers.available()``, e.g. ``photo-0.25``), ``nl-means``, ``ffdnet``, a
robust_api denoiser ``.safetensors`` file (what ``denoisers/train_photonet.py`` writes), or one of
the paper's ``.pth.tar`` checkpoints.
A denoiser whose file says it was trained for one σ runs only at that σ (±10%).

Query logs: one SQLite log per (denoiser, σ) under ``--cache-dir`` (default
``build/benchmarks/natural_photos/``), plus ``clean.sqlite3`` for the clean answers. With the
fixed seed a rerun reuses every logged answer (the SDK matches image digest, seed, σ,
classifier version, denoiser identity and weights digest, and preprocessing), so only new rows
cost time; delete a row's log to measure it afresh. Each (denoiser, σ) row of the 65 crops is
7,800 queries: tens of minutes on 2 CPU cores.

Run (from the repository root)::

    python benchmarks/natural_photos.py [--sigmas 0.12,0.25] [--denoiser LABEL=NAME_OR_PATH ...]
        [--no-defaults] [--skip LABEL@SIGMA ...] [--max-crops K] [--cache-dir DIR] [--threads 2]
        [--no-throughput] [--write-docs]

``--write-docs`` replaces the section between ``<!-- natural_photos:begin -->`` and
``<!-- natural_photos:end -->`` in docs/benchmarks.md and writes docs/img/natural_photos.png.

Needs: ``pip install 'robust-api[imagenet,classical,plot]'`` (and ``'robust-api[ffdnet]'`` for
the FFDNet row), and the Debian photo packages (``robust_api.denoisers.photos.DEBIAN_PACKAGES``).
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import statistics
import sys
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.denoiser_throughput import device_name  # noqa: E402
from robust_api import ABSTAIN, RobustAPI  # noqa: E402
from robust_api.analysis.metrics import average_certified_radius, certified_accuracy_curve  # noqa: E402
from robust_api.errors import MissingDependencyError, RobustAPIError  # noqa: E402
from robust_api.noise import as_fed, clips_noisy_copies, sigma_mismatch  # noqa: E402
from robust_api.statistics import clopper_pearson_lower, clopper_pearson_upper  # noqa: E402

CLASSIFIER = "efficientnet-lite2"
DOCS = ROOT / "docs" / "benchmarks.md"
PLOT = ROOT / "docs" / "img" / "natural_photos.png"
BEGIN_MARKER = "<!-- natural_photos:begin -->"
END_MARKER = "<!-- natural_photos:end -->"
DEFAULT_SOURCES = (("nl-means", "nl-means"), ("ffdnet", "ffdnet"))
THROUGHPUT_BATCH = 20
PAPER = ("Salman et al. (2020), Fig. 6, σ = 0.25, N = 100, Stab+MSE denoisers, label = the API's answer on the clean "
         "photo: Azure 33% at r = 0 / ≈17% at r = 0.25, Clarifai 29% / ≈15%, Google 21% / ≈13%, AWS 13% / ≈5%; "
         "without a denoiser 12%, 2%, ≈0% and 3% at r = 0.")


# ---- pure helpers (tested in tests/project/test_benchmark_natural_photos.py) ----------------------------

def parse_denoiser_option(text: str) -> tuple[str, str]:
    """``"LABEL=NAME_OR_PATH"`` (or a bare ``NAME_OR_PATH``, labelled by its file name without
    ``.safetensors``) → (label, source). Raises ValueError for an empty part, the reserved
    label ``none``, or a label with characters that would break a markdown table."""
    label, sep, source = text.partition("=")
    if not sep:
        source = text
        label = Path(text).name.removesuffix(".safetensors")
    label, source = label.strip(), source.strip()
    if not label or not source:
        raise ValueError(f"--denoiser takes LABEL=NAME_OR_PATH, got {text!r}")
    if label == "none":
        raise ValueError("the label 'none' is the row without a denoiser; pick another label")
    if re.search(r"[|\n`]", label):
        raise ValueError(f"a denoiser label cannot hold '|', '`' or a newline: {label!r}")
    return label, source


def parse_skip_option(text: str) -> tuple[str, float]:
    """``"LABEL@SIGMA"`` → (label, σ): a row this run leaves out. Raises ValueError otherwise."""
    label, sep, sigma = text.rpartition("@")
    try:
        value = float(sigma)
    except ValueError:
        value = float("nan")
    if not sep or not label.strip() or not 0 < value <= 1:
        raise ValueError(f"--skip takes LABEL@SIGMA, e.g. ffdnet@0.12, got {text!r}")
    return label.strip(), value


def log_file_name(label: str, sigma: float, device: str = "cpu") -> str:
    """The query log of one (denoiser, σ) row, e.g. ``ffdnet-sigma0.25.sqlite3`` (``-cuda`` is
    added off the CPU: the classifier's answers may differ by device, its version does not)."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", label).strip("._") or "denoiser"
    suffix = "" if device == "cpu" else f"-{re.sub(r'[^A-Za-z0-9]+', '', device)}"
    return f"{slug}-sigma{sigma:g}{suffix}.sqlite3"


def radius_columns(sigma: float) -> list[float]:
    """The radii of the table: 0, σ/2, σ and 1.5σ (with N = 100 and α = 0.001 no radius above
    σ·Φ⁻¹(0.001^(1/100)) ≈ 1.5006σ can be certified)."""
    return [0.0, round(sigma / 2, 4), round(sigma, 4), round(1.5 * sigma, 4)]


def interval_half_width(successes: int, trials: int) -> float:
    """Half the width of the two-sided 95% Clopper–Pearson interval of ``successes``/``trials``."""
    return (clopper_pearson_upper(successes, trials, 0.025) - clopper_pearson_lower(successes, trials, 0.025)) / 2


def replace_marked_section(text: str, section: str, begin: str = BEGIN_MARKER, end: str = END_MARKER) -> str:
    """``text`` with everything between the ``begin`` and ``end`` marker lines replaced by
    ``section`` (the markers stay). Raises ValueError unless each marker occurs exactly once,
    ``begin`` first."""
    if text.count(begin) != 1 or text.count(end) != 1:
        raise ValueError(f"expected one {begin!r} and one {end!r} in the file, found "
                         f"{text.count(begin)} and {text.count(end)}; add them around the section to replace")
    start, stop = text.index(begin) + len(begin), text.index(end)
    if stop < start:
        raise ValueError(f"{end!r} comes before {begin!r}")
    return text[:start] + "\n" + section.strip("\n") + "\n" + text[stop:]


# ---- the measurements -----------------------------------------------------------------------

@dataclass
class Row:
    """One (denoiser, σ) row: what was measured, or why it was skipped."""

    label: str
    sigma: float
    note: str = ""
    psnr_db: Optional[float] = None
    labels: list = field(default_factory=list)
    radii: list = field(default_factory=list)
    paid: int = 0
    seconds: float = 0.0

    @property
    def measured(self) -> bool:
        return bool(self.labels)


def load_denoiser_for(source: Optional[str], sigma: float, device: str):
    """(module or None, note): the denoiser ``source`` for noise level ``sigma``, or None and
    the reason it has no row at this σ (None, "" for the row without a denoiser)."""
    from robust_api.denoisers.loading import load_denoiser

    if source is None:
        return None, ""
    try:
        if source == "nl-means":
            return load_denoiser("nl-means", noise_sd=sigma, device=device), ""
        module = load_denoiser(source, device=device)
    except MissingDependencyError as exc:
        return None, f"not measured: {exc}"
    mismatch = sigma_mismatch(module, sigma)
    if mismatch is None:
        return module, ""
    if mismatch.kind == "range":  # a σ-conditioned denoiser still runs outside its range
        low, high = mismatch.trained
        return module, f"outside its trained σ range [{low:g}, {high:.3g}]"
    return None, f"trained for σ = {mismatch.trained:g}"  # trained or fine-tuned for one σ: a row only at that σ


def clean_answers(crops: np.ndarray, args) -> list:
    """The classifier's label of each clean crop (one logged clean query per crop)."""
    with RobustAPI("local", model=CLASSIFIER, log=args.cache_dir / log_file_name("clean", 0, args.device),
                   seed=args.seed, device=args.device, progress=False) as api:
        return [api.predict(crop, N=1, noise_sd=0).label for crop in crops]


def certify_row(row: Row, module, crops: np.ndarray, names: Sequence[str], args) -> None:
    """Certify every crop at ``row.sigma`` through RobustAPI with ``module`` in front of lite2."""
    path = args.cache_dir / log_file_name(row.label, row.sigma, args.device)
    began = time.perf_counter()
    with RobustAPI("local", model=CLASSIFIER, denoiser=module, log=path, seed=args.seed, device=args.device,
                   progress=False) as api:
        for i, (crop, name) in enumerate(zip(crops, names)):
            cert = api.certify(crop, noise_sd=row.sigma, N0=args.n0, N=args.n, alpha=args.alpha)
            row.labels.append(cert.label)
            row.radii.append(cert.radius)
            row.paid += cert.queries
            label = "abstain" if cert.label is ABSTAIN else cert.label
            print(f"[{row.label} σ={row.sigma:g}] {i + 1}/{len(crops)} {name}: {label} r={cert.radius:.3f} "
                  f"({cert.queries} paid, {time.perf_counter() - began:.0f} s)", file=sys.stderr, flush=True)
    row.seconds = time.perf_counter() - began


def psnr_of(module, images: torch.Tensor, sigma: float, seed: int) -> float:
    """Mean PSNR (dB) of ``module`` on float [N, 3, H, W] ``images`` + σ noise (seeded), fed as
    the SDK feeds it; ``module`` None: the clipped noisy copy (what the classifier gets)."""
    from robust_api.denoisers.training import psnr

    return psnr(module or torch.nn.Identity(), images, sigma, seed=seed, batch_size=8, clip=clips_noisy_copies(module))


def copies_per_second(module, sigma: float, crops: np.ndarray, device: str, repeats: int) -> float:
    """Noisy 224² copies per second through ModuleDenoiser (fp32) + LocalProvider.send (lite2)."""
    from robust_api.providers.local import LocalProvider
    from robust_api.torch_utils import ModuleDenoiser

    provider = LocalProvider(model=CLASSIFIER, device=device)
    clean = crops[np.arange(THROUGHPUT_BATCH) % len(crops)].astype(np.float32) / 255
    noisy = clean + sigma * np.random.default_rng(0).standard_normal(clean.shape, dtype=np.float32)
    runner = None
    noisy = as_fed(module, noisy)
    if module is not None:
        runner = ModuleDenoiser(module, device=device, mixed_precision=False)
        runner.set_noise_sd(sigma)

    def once():
        provider.send(noisy if runner is None else runner(noisy))

    once()  # warm-up
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        once()
        times.append(time.perf_counter() - began)
    return THROUGHPUT_BATCH / statistics.median(times)


# ---- the report -------------------------------------------------------------------------------

def machine_text(threads: int) -> str:
    cpu = device_name(torch.device("cpu")).rsplit(",", 1)[0]
    gpu = f"; GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else "; no GPU"
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (f"{cpu}, {os.cpu_count()} cores, {memory:.0f} GiB{gpu}; torch {torch.__version__}, {_plural(threads, 'thread')}; "
            f"load average {os.getloadavg()[0]:.1f} when the run started")


def certified_table(rows: list[Row], sigma: float, clean: list, center: Sequence[bool]) -> str:
    """One markdown table: per row PSNR, certified accuracy (%) at each radius, then at r = 0 on
    the ``center`` views only (the ImageNet-style view of each photo), ACR, abstentions."""
    radii = radius_columns(sigma)
    picked = [i for i, is_center in enumerate(center) if is_center]
    lines = ["| denoiser | PSNR dB | " + " | ".join(f"r = {r:g}" for r in radii)
             + f" | r = 0, {_plural(len(picked), 'center view')} | ACR | abstained | note |",
             "|---|---:|" + "---:|" * (len(radii) + 1) + "---:|---:|---|"]
    for row in rows:
        psnr = "" if row.psnr_db is None else f"{row.psnr_db:.2f}"
        if row.measured:
            curve = certified_accuracy_curve(row.labels, row.radii, clean, radii)
            acr = average_certified_radius(row.labels, row.radii, clean)
            abstained = sum(label is ABSTAIN for label in row.labels) / len(row.labels)
            on_center = certified_accuracy_curve([row.labels[i] for i in picked], [row.radii[i] for i in picked],
                                                 [clean[i] for i in picked], [0.0])[0] if picked else float("nan")
            cells = [f"{100 * a:.1f}" for a in curve]
            cells += [f"{100 * on_center:.1f}", f"{acr:.3f}", f"{100 * abstained:.0f}%"]
        else:
            cells = ["-"] * (len(radii) + 3)
        lines.append(f"| {row.label} | {psnr} | " + " | ".join(cells) + f" | {row.note} |")
    return "\n".join(lines)


def throughput_table(speeds: dict, devices: list[str]) -> str:
    """``speeds``: {(label, σ): {device: copies per second as text}}."""
    header = " | ".join(f"{d} copies/s" for d in devices)
    lines = [f"| denoiser | σ | {header} |", "|---|---:|" + "---:|" * len(devices)]
    for (label, sigma), per_device in speeds.items():
        lines.append(f"| {label} | {sigma:g} | " + " | ".join(per_device.get(d, "-") for d in devices) + " |")
    return "\n".join(lines)


def plot_curves(rows: list[Row], sigmas: list[float], clean: list, path: Path, args) -> None:
    """Certified accuracy (%) against the L2 radius: one panel per σ, one line per measured row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {label: f"C{i % 10}" for i, label in enumerate(dict.fromkeys(row.label for row in rows))}
    fig, axes = plt.subplots(1, len(sigmas), figsize=(4.2 * len(sigmas), 3.4), squeeze=False)
    for ax, sigma in zip(axes[0], sigmas):
        grid = np.linspace(0, 1.6 * sigma, 161)
        for row in rows:
            if row.sigma == sigma and row.measured:
                ax.plot(grid, 100 * certified_accuracy_curve(row.labels, row.radii, clean, grid), label=row.label,
                        color=colours[row.label])
        ax.set_title(f"σ = {sigma:g}")
        ax.set_xlabel("L2 radius")
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel("certified accuracy (%)")
    fig.suptitle(f"{CLASSIFIER} on {len(clean)} natural-photo crops, N0 = {args.n0}, N = {args.n}, "
                 f"α = {args.alpha:g}", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.94))  # room for the title
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _paragraph(text: str) -> str:
    return textwrap.fill(text, width=100, break_long_words=False, break_on_hyphens=False)


def clean_confidence(crops: np.ndarray) -> np.ndarray:
    """[N] float: the probability the classifier gives its own answer on each clean uint8 crop."""
    from robust_api.models.imagenet import load_imagenet_classifier

    classifier = load_imagenet_classifier(CLASSIFIER)
    images = torch.from_numpy(crops).permute(0, 3, 1, 2).float().div_(255)
    with torch.no_grad():
        return torch.cat([classifier(images[i : i + 16]).softmax(1).amax(1) for i in range(0, len(images), 16)]).numpy()


def report(rows: list[Row], sigmas: list[float], clean: list, names: Sequence[str], speeds: dict,
           devices: list[str], sources: Sequence[tuple], args, command: str, confidence: np.ndarray) -> str:
    """The markdown section: command, setup, one certified-accuracy table per σ, throughput, plot."""
    photos = len({name.split("/")[0] for name in names})
    count = len(clean)
    half = interval_half_width(count // 2, count)
    described = {"none": "the classifier alone", "nl-means": "classical non-local means (scikit-image, h = 0.4σ)",
                 "ffdnet": "FFDNet's published weights (optional GPL-3.0 `ffdnet` package), told σ"}
    row_text = "; ".join(
        f"`{label}`: {described[source or 'none']}" if (source or "none") in described
        else f"`{label}`" if label == source else f"`{label}`: `{source}`"
        for label, source in sources)
    if any(label == source and source not in described for label, source in sources):
        row_text += " (rows named as a shipped denoiser are that file; model cards in `denoisers/`)"
    parts = [
        "## Natural photos: the paper's Figure 6, locally",
        "",
        "```bash",
        command,
        "```",
        "",
        _paragraph(
            f"Black box `{CLASSIFIER}` (`RobustAPI(\"local\", model=\"{CLASSIFIER}\")`), {_plural(count, 'crop')} of "
            f"224² from {_plural(photos, 'test photo')} of the Debian photo packages "
            "(`robust_api.denoisers.photos.evaluation_crops(\"test\")`: five views of each photo; no photo is in two "
            f"splits). Each crop is certified through `RobustAPI.certify` with N0 = {args.n0}, N = {args.n}, "
            f"α = {args.alpha:g}, seed {args.seed}; the label that counts is the classifier's own answer on the clean "
            "crop (the paper's convention). A denoiser gets the noisy copy unclipped (clipped only for weights "
            "trained on clipped copies); its output is clipped before the classifier. PSNR: one seeded noise draw "
            f"per crop, fed the same way. Rows: {row_text}. Machine: {machine_text(args.threads)}."),
        "",
        _paragraph(
            f"With {_plural(count, 'crop')}, a certified accuracy near 50% has a 95% Clopper–Pearson interval of "
            f"±{100 * half:.0f} points, and the five crops of a photo are correlated, so differences of a few "
            "points between rows are noise."),
        "",
        _paragraph(
            f"How hard these crops are: on the clean crops `{CLASSIFIER}` gives its own answer a median probability "
            f"of {float(np.median(confidence)):.2f}, and {100 * float(np.mean(confidence >= 0.5)):.0f}% of crops at "
            "least 0.5. Most views are scenes, textures or parts of an object rather than one ImageNet object, so "
            "the answer that counts is a weak guess that noise easily flips; the paper's ImageNet photos are "
            "centred on one of the 1,000 classes. The column for the center views (each photo resized and "
            "center-cropped, as ImageNet is evaluated) is the closest to that setting."),
    ]
    for sigma in sigmas:
        parts += ["", f"Certified accuracy (%) at σ = {sigma:g}:", "",
                  certified_table([r for r in rows if r.sigma == sigma], sigma, clean,
                                  [name.endswith("/center") for name in names])]
    if speeds:
        parts += ["", _paragraph(
            f"Denoise + classify with {CLASSIFIER}: noisy 224² copies per second (batches of {THROUGHPUT_BATCH}, "
            f"fp32, {_plural(args.threads, 'CPU thread')}, median of {_plural(args.repeats, 'run')} after a "
            "warm-up):"), "", throughput_table(speeds, devices)]
    parts += ["", "![certified accuracy against radius](img/natural_photos.png)", "",
              _paragraph(f"For comparison, {PAPER}")]
    return "\n".join(parts)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sigmas", default="0.12,0.25", help="comma-separated σ (default 0.12,0.25; e.g. add 0.5)")
    parser.add_argument("--denoiser", action="append", default=[], metavar="LABEL=NAME_OR_PATH",
                        help="a denoiser row (repeatable)")
    parser.add_argument("--no-defaults", action="store_true", help="leave out the nl-means and ffdnet rows")
    parser.add_argument("--skip", action="append", default=[], metavar="LABEL@SIGMA",
                        help="leave out one row (repeatable); the table shows it as not measured")
    parser.add_argument("--max-crops", type=int, default=None, help="the first K test crops (default all)")
    parser.add_argument("--cache-dir", type=Path, default=ROOT / "build" / "benchmarks" / "natural_photos")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="device of the certification runs (default cpu)")
    parser.add_argument("--repeats", type=int, default=3, help="timed throughput runs (median reported)")
    parser.add_argument("--no-throughput", action="store_true")
    parser.add_argument("--write-docs", action="store_true", help="update docs/benchmarks.md and the plot")
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--alpha", type=float, default=0.001, help=argparse.SUPPRESS)
    parser.add_argument("--n0", type=int, default=20, help=argparse.SUPPRESS)  # development only
    parser.add_argument("--n", type=int, default=100, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:
        sigmas = [float(s) for s in args.sigmas.split(",") if s.strip()]
        extra = [parse_denoiser_option(text) for text in args.denoiser]
        skipped = {parse_skip_option(text) for text in args.skip}
    except ValueError as exc:
        parser.error(str(exc))
    if not sigmas or not all(0 < s <= 1 for s in sigmas):
        parser.error(f"--sigmas must be numbers in (0, 1], got {args.sigmas!r}")
    sources = [("none", None)] + ([] if args.no_defaults else list(DEFAULT_SOURCES)) + extra
    labels = [label for label, _ in sources]
    if len(set(labels)) != len(labels) or len({log_file_name(lb, 1) for lb in labels}) != len(labels):
        parser.error(f"denoiser labels must be distinct (also once reduced to file names): {labels}")
    if args.max_crops is not None and args.max_crops < 1:
        parser.error("--max-crops must be at least 1")
    if args.write_docs:  # checked now, not after hours of certification
        try:
            replace_marked_section(DOCS.read_text(encoding="utf-8"), "")
        except ValueError as exc:
            parser.error(f"{DOCS}: {exc}")
    for label, source in extra:  # a typo in a name or path fails now, before any row is certified
        try:
            load_denoiser_for(source, sigmas[0], "cpu")
        except (RobustAPIError, OSError, ValueError) as exc:
            parser.error(f"--denoiser {label}={source}: {exc}")
    torch.set_num_threads(args.threads)
    args.cache_dir.mkdir(parents=True, exist_ok=True)
    command = shlex.join(["python", "benchmarks/natural_photos.py", *(sys.argv[1:] if argv is None else argv)])

    from robust_api.denoisers.photos import evaluation_crops

    crops, names = evaluation_crops("test", 224)
    if args.max_crops is not None:
        crops, names = crops[: args.max_crops], names[: args.max_crops]
    print(f"{len(crops)} crops; machine: {machine_text(args.threads)}", file=sys.stderr, flush=True)
    clean = clean_answers(crops, args)
    images = torch.from_numpy(crops).permute(0, 3, 1, 2).float().div_(255)

    rows: list[Row] = []
    for sigma in sigmas:
        for label, source in sources:
            row = Row(label, sigma)
            rows.append(row)
            if any(label == s_label and abs(sigma - s_sigma) < 1e-9 for s_label, s_sigma in skipped):
                row.note = "not measured in this run (--skip)"
                continue
            module, row.note = load_denoiser_for(source, sigma, args.device)
            if module is None and source is not None:
                print(f"[{label} σ={sigma:g}] skipped: {row.note}", file=sys.stderr, flush=True)
                continue
            row.psnr_db = psnr_of(None if module is None else module.to("cpu"), images, sigma, args.seed)
            certify_row(row, module, crops, names, args)
            print(f"[{label} σ={sigma:g}] {len(crops)} crops in {row.seconds:.0f} s, {row.paid} queries paid "
                  f"({row.paid / max(row.seconds, 1e-9):.1f} copies/s)", file=sys.stderr, flush=True)

    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    speeds: dict = {}
    if not args.no_throughput:
        for label, source in sources:
            # at σ = 0.25 when the denoiser has a row there, else at its first σ
            measured = [row.sigma for row in rows if row.label == label and row.measured]
            if not measured:
                continue
            sigma = 0.25 if 0.25 in measured else measured[0]
            for device in devices:
                module, _ = load_denoiser_for(source, sigma, device)
                speed = copies_per_second(module, sigma, crops, device, args.repeats)
                speeds.setdefault((label, sigma), {})[device] = f"{speed:.1f}"

    text = report(rows, sigmas, clean, names, speeds, devices, sources, args, command, clean_confidence(crops))
    print(text)
    if args.write_docs:
        DOCS.write_text(replace_marked_section(DOCS.read_text(encoding="utf-8"), text), encoding="utf-8")
        plot_curves(rows, sigmas, clean, PLOT, args)
        print(f"\nwrote {DOCS.relative_to(ROOT)} and {PLOT.relative_to(ROOT)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
