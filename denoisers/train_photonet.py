"""Recipe: train the PhotoNet photo denoisers on the Debian photos (resumable, seeded).

Stage ``mse``: one noise-level-conditioned PhotoNet for every σ in [0, 0.55], MSE objective,
on random 96² crops of the train photos at four scales (shorter side 256, 384, 512, 768), the
noisy copy unclipped, as the SDK gives it to a denoiser.

Stage ``stab``: from the MSE weights, fine-tune for one σ with the stability objective of
Salman et al. (2020) through ``efficientnet-lite0`` only (the surrogate), on 224² crops, plus
``--mse-weight`` times the MSE loss. The black box of the benchmark, ``efficientnet-lite2``, is
never used here.

Both stages write a checkpoint after every epoch and resume from it when rerun with the same
arguments; progress goes to the log file given with ``--log``. Run from the repository root::

    python denoisers/train_photonet.py mse --threads 2
    python denoisers/train_photonet.py stab --noise-sd 0.25 --threads 2

Needs ``apt-get install`` of the packages in ``robust_api.denoisers.photos.DEBIAN_PACKAGES`` and,
for ``stab``, ``pip install 'robust-api[imagenet]'``.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import time
from pathlib import Path

import torch

from robust_api.denoisers.registry import build_architecture
from robust_api.denoisers.loading import load_denoiser, save_denoiser
from robust_api.denoisers.photos import evaluation_crops, load_split
from robust_api.denoisers.training import psnr, train_denoiser

ARCH = {"widths": [32, 64, 128], "blocks": 2, "noise_sd_range": [0.0, 0.55]}
BUILD = Path("build/denoisers")


def _val_tensor(size: int = 224) -> torch.Tensor:
    crops, _ = evaluation_crops("val", size)
    return torch.from_numpy(crops).permute(0, 3, 1, 2).float().div_(255.0)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("stage", choices=("mse", "stab"))
    parser.add_argument("--noise-sd", type=float, default=0.25, help="σ of the stab stage")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--patches-per-epoch", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--mse-weight", type=float, default=100.0,
                        help="stab: weight of the MSE term next to the cross-entropy (default 100)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default=None)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--log", type=Path, default=None)
    parser.add_argument("--name", default=None,
                        help="stem of the checkpoint and final weights in build/denoisers (default: photonet-mse, "
                             "photonet-stab-<σ>); a new name starts a new run")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    BUILD.mkdir(parents=True, exist_ok=True)
    handlers = [logging.StreamHandler(sys.stdout)] + ([logging.FileHandler(args.log)] if args.log else [])
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", handlers=handlers)
    log = logging.getLogger("train_photonet")
    val = _val_tensor()
    began = time.perf_counter()
    if args.stage == "mse":
        name = args.name or "photonet-mse"
        model = build_architecture("photonet", image_channels=3, **ARCH)
        images = load_split("train", shorter_sides=(256, 384, 512, 768))
        settings = dict(noise_sd=(0.0, 0.55), objective="mse", epochs=args.epochs or 50,
                        patch_size=96, patches_per_epoch=args.patches_per_epoch or 2048,
                        batch_size=args.batch_size or 16, lr=args.lr or 1e-3)
        classifiers = []
    else:
        from robust_api.models.imagenet import load_imagenet_classifier

        name = args.name or f"photonet-stab-{args.noise_sd:.2f}"
        model = load_denoiser(str(BUILD / "photonet-mse.final.safetensors"), device="cpu").train()
        images = load_split("train", shorter_sides=(256, 320, 448))
        classifiers = [load_imagenet_classifier("efficientnet-lite0")]
        settings = dict(noise_sd=args.noise_sd, objective="stability", epochs=args.epochs or 10,
                        patch_size=224, patches_per_epoch=args.patches_per_epoch or 256,
                        batch_size=args.batch_size or 8, lr=args.lr or 3e-5, mse_weight=args.mse_weight)
    checkpoint = BUILD / f"{name}.ckpt"
    log.info("%s: %d training images, settings %s", name, len(images), settings)

    def progress(epoch, step, steps, loss):
        if step % 32 == 0 or step == steps:
            log.info("epoch %d step %d/%d loss %.5g (%.0f s)", epoch, step, steps, loss, time.perf_counter() - began)

    history = train_denoiser(model, images, classifiers=classifiers, seed=args.seed, device=args.device,
                             val_images=val, checkpoint=checkpoint, progress=progress, **settings)
    for stats in history:
        log.info("epoch %d: loss %.5g val PSNR %.2f dB (%.0f s)", stats.epoch, stats.loss, stats.val_psnr, stats.seconds)
    model = model.to("cpu").eval()
    scores = {f"{sd:.2f}": round(psnr(model, val, sd, seed=1), 3) for sd in (0.12, 0.25, 0.5)}
    log.info("val PSNR by σ: %s", scores)
    final = BUILD / f"{name}.final.safetensors"
    for target in [final] + ([args.out] if args.out is not None else []):
        noise_sd = None if args.stage == "mse" else args.noise_sd
        save_denoiser(model, target, noise_sd=noise_sd, extra_metadata={
            "dataset": "Debian photos, train split (robust_api.denoisers.photos)",
            "objective": settings["objective"] if args.stage == "mse" else f"stability+{args.mse_weight}*mse",
            "surrogates": json.dumps(["efficientnet-lite0"] if classifiers else []),
            "recipe": "python denoisers/train_photonet.py " + " ".join(sys.argv[1:] if argv is None else argv),
            "hardware": f"{platform.machine()} CPU, {torch.get_num_threads()} threads",
            "val_psnr_db": json.dumps(scores), "torch": torch.__version__,
        })
        log.info("saved %s", target)
    return 0


if __name__ == "__main__":
    sys.exit(main())
