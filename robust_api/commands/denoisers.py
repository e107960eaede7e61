"""``robust-api train-denoiser`` and ``robust-api eval-denoiser`` (also ``python -m robust_api …``).

These are the scripts that trained and measured the shipped denoisers; their model cards in
the repository's ``denoisers/`` folder give the exact command lines.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import time
from typing import Any, List, Sequence

import numpy as np

from ..errors import InvalidParameterError
from ..noise import as_fed, sigma_mismatch
from .tables import text_table

__all__ = ["add_commands", "load_surrogate"]

DATASETS = ("fashion-mnist", "photos")


def load_surrogate(spec: str):
    """A classifier for the stability objective / evaluation: ``"bundled"`` (the bundled
    Fashion-MNIST CNN) or a robust_api classifier ``.safetensors`` path. Eval mode, CPU."""
    from ..providers.local import bundled_model_path, load_classifier

    module, _, _ = load_classifier(bundled_model_path() if spec == "bundled" else spec)
    return module


def _architecture(args: argparse.Namespace, channels: int):
    import torch

    from ..denoisers.registry import build_architecture
    from ..denoisers.loading import load_denoiser

    if args.init:
        return load_denoiser(args.init, device="cpu")
    torch.manual_seed(args.seed)
    if args.arch == "dncnn":
        return build_architecture("dncnn", image_channels=channels, depth=args.depth, channels=args.channels)
    if args.arch == "memnet":
        return build_architecture("memnet", image_channels=channels, channels=args.channels,
                                  num_memory_blocks=args.memory_blocks, num_residual_blocks=args.residual_blocks)
    widths = [int(w) for w in args.widths.split(",")]
    model = build_architecture("drunet", image_channels=channels, widths=widths, blocks=args.blocks)
    model.noise_sd = args.noise_sd
    return model


def _training_data(args: argparse.Namespace):
    """(training images, patch_size, validation images [M, C, H, W], channels, dataset label)."""
    import torch

    if args.dataset == "fashion-mnist":
        from ..denoisers.data import fashion_mnist_tensors

        train, _ = fashion_mnist_tensors("train")
        test, _ = fashion_mnist_tensors("test")
        return train, None, test[: args.val_count], 1, "Fashion-MNIST train (60,000 images)"
    if args.dataset == "photos":
        from ..denoisers.data import HELD_OUT_PHOTOS, TRAIN_PHOTOS, load_photos

        val = [p[:, :256, :256] for p in load_photos(HELD_OUT_PHOTOS)]
        return load_photos(TRAIN_PHOTOS), args.patch_size, torch.stack(val), 3, "photos: " + ", ".join(TRAIN_PHOTOS)
    from ..denoisers.data import load_image_folder

    images = load_image_folder(args.dataset, args.image_channels)
    val = torch.stack([images[0][:, : args.patch_size, : args.patch_size]])
    return images, args.patch_size, val, args.image_channels, f"folder {args.dataset}"


class _Progress:
    """A one-line progress display on stderr (tqdm when installed), or nothing."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.bar = None
        self.epoch = None

    def __call__(self, epoch: int, step: int, steps: int, loss: float) -> None:
        if not self.enabled:
            return
        if epoch != self.epoch:
            self.close()
            self.epoch = epoch
            try:
                from tqdm import tqdm

                self.bar = tqdm(total=steps, desc=f"epoch {epoch}", unit="step", file=sys.stderr, leave=False)
            except ImportError:
                self.bar = None
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{loss:.4g}")
        elif step == steps or step % 50 == 0:
            print(f"\repoch {epoch} step {step}/{steps} loss {loss:.4g}", end="", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        elif self.enabled and self.epoch is not None:
            print(file=sys.stderr)


def _cmd_train(args: argparse.Namespace) -> int:
    import torch

    from ..denoisers.loading import save_denoiser
    from ..denoisers.training import train_denoiser

    if args.threads:
        torch.set_num_threads(args.threads)
    images, patch_size, val, channels, data_label = _training_data(args)
    model = _architecture(args, channels)
    classifiers = [load_surrogate(spec) for spec in args.classifier]
    progress = _Progress(not args.no_progress)
    began = time.perf_counter()
    history = train_denoiser(
        model, images, noise_sd=args.noise_sd, objective=args.objective, classifiers=classifiers,
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed, device=args.device,
        patch_size=patch_size, patches_per_epoch=args.patches_per_epoch, val_images=val,
        checkpoint=args.checkpoint, progress=progress,
    )
    progress.close()
    seconds = time.perf_counter() - began
    for stats in history:
        print(f"epoch {stats.epoch}: loss {stats.loss:.5g}  val PSNR {stats.val_psnr:.2f} dB  {stats.seconds:.0f} s")
    device = next(model.parameters()).device
    hardware = torch.cuda.get_device_name(device) if device.type == "cuda" else (
        f"CPU ({platform.machine()}, {torch.get_num_threads()} threads)")
    metadata = {
        "dataset": data_label,
        "objective": args.objective,
        "init": args.init or "random",
        "surrogates": json.dumps(args.classifier),
        "recipe": "robust-api " + " ".join(shlex.quote(a) for a in args.argv),
        "hardware": hardware,
        "train_seconds": f"{seconds:.0f}",
        "val_psnr_db": f"{history[-1].val_psnr:.3f}" if history else "",
        "torch": torch.__version__,
    }
    path = save_denoiser(model.to("cpu"), args.out, noise_sd=args.noise_sd, extra_metadata=metadata)
    print(f"saved {path} ({sum(p.numel() for p in model.parameters()):,} parameters, {seconds:.0f} s)")
    return 0


def _apply_in_chunks(module, images, chunk: int = 512):
    """``module`` on float [N, C, H, W] ``images`` 512 at a time, without autograd; outputs concatenated."""
    import torch

    with torch.no_grad():
        return torch.cat([module(images[s : s + chunk]) for s in range(0, len(images), chunk)])


def _accuracy(classifier, images, labels) -> float:
    """Top-1 accuracy of ``classifier`` on float [N, C, H, W] ``images`` against int ``labels``."""
    return float((_apply_in_chunks(classifier, images).argmax(1) == labels).float().mean())


def _psnr_of(images, clean) -> float:
    """Mean over images of the PSNR (dB, peak 1) of ``images`` against ``clean``, both [N, C, H, W]."""
    from ..denoisers.training import psnr_per_image

    return float(psnr_per_image(images, clean).mean())


def _trained_for_another_sigma(module, sigma: float) -> bool:
    """True when ``module`` was trained (or fine-tuned) for another σ (see
    :func:`robust_api.noise.sigma_mismatch`): it is then skipped. A σ-conditioned module is
    told ``sigma`` first (outside its range it still runs, as the warning says)."""
    if module is None:
        return False
    if getattr(module, "noise_sd_range", None) is not None:
        module.set_noise_sd(sigma)
    mismatch = sigma_mismatch(module, sigma)
    return mismatch is not None and mismatch.kind != "range"


def _cmd_eval_photos(args: argparse.Namespace, denoisers: List[tuple]) -> int:
    import torch

    from ..denoisers.data import HELD_OUT_PHOTOS, load_photos
    from ..denoisers.loading import load_denoiser
    from ..denoisers.training import add_noise

    names = args.photos.split(",") if args.photos else list(HELD_OUT_PHOTOS)
    photos = load_photos(names)
    rows = []
    for sigma in args.noise_sd:
        generator = torch.Generator().manual_seed(args.seed)
        noisy = [add_noise(p.unsqueeze(0), sigma, generator) for p in photos]
        row = [sigma, f"{np.mean([_psnr_of(as_fed(None, n), p.unsqueeze(0)) for n, p in zip(noisy, photos)]):.2f}"]
        for name, module in denoisers:
            if module is None:
                module = load_denoiser("nl-means", noise_sd=sigma, device="cpu")
            elif _trained_for_another_sigma(module, sigma):
                row.append("-")
                continue
            with torch.no_grad():
                values = [_psnr_of(module(as_fed(module, n)).clamp(0, 1), p.unsqueeze(0)) for n, p in zip(noisy, photos)]
            row.append(f"{np.mean(values):.2f}")
        rows.append(row)
    print(f"PSNR (dB) on held-out photos {', '.join(names)}, seed {args.seed}")
    print(text_table(["noise_sd", "noisy"] + [name for name, _ in denoisers], rows))
    return 0


def _certify_all(images, denoiser, classifier_spec, args, sigma, n0, n) -> tuple:
    from ..api import RobustAPI

    model = None if classifier_spec == "bundled" else classifier_spec
    api = RobustAPI("local", denoiser=denoiser, log=False, seed=args.seed, device="cpu", model=model)
    labels, radii = [], []
    for image in images:
        cert = api.certify(image.permute(1, 2, 0).numpy(), noise_sd=sigma, N0=n0, N=n, alpha=args.alpha)
        labels.append(cert.label)
        radii.append(cert.radius)
    return labels, radii


def _cmd_eval_fashion_mnist(args: argparse.Namespace, denoisers: List[tuple]) -> int:
    import torch

    from ..analysis import average_certified_radius, certified_accuracy
    from ..datasets import FASHION_MNIST_CLASSES
    from ..denoisers.data import fashion_mnist_tensors
    from ..denoisers.training import add_noise

    classifier = load_surrogate(args.classifier)
    test, labels = fashion_mnist_tensors("test")
    count = min(args.num_images, len(test))
    # Every (10000 // count)-th test image: a fixed, class-balanced-enough subset.
    index = torch.arange(0, len(test), max(1, len(test) // count))[:count]
    images, truth = test[index], labels[index]
    clean_pred = _apply_in_chunks(classifier, images).argmax(1)
    names = np.array(FASHION_MNIST_CLASSES)
    truth_names, clean_names = list(names[truth.numpy()]), list(names[clean_pred.numpy()])
    print(f"Fashion-MNIST test images: {count} (every {max(1, len(test) // count)}th), classifier {args.classifier}, "
          f"clean accuracy {_accuracy(classifier, images, truth):.4f}")
    rows = []
    for sigma in args.noise_sd:
        generator = torch.Generator().manual_seed(args.seed)
        noisy = add_noise(images, sigma, generator)
        for name, module in denoisers:
            if _trained_for_another_sigma(module, sigma):
                continue
            fed = as_fed(module, noisy)
            denoised = fed if module is None else _apply_in_chunks(module.eval(), fed).clamp(0, 1)
            rows.append([sigma, name, f"{_psnr_of(denoised, images):.2f}", f"{_accuracy(classifier, denoised, truth):.4f}"])
    print("\nPSNR and accuracy on one noisy copy per image")
    print(text_table(["noise_sd", "denoiser", "PSNR dB", "accuracy"], rows))
    radii_grid = args.radii
    rows = []
    for sigma in args.noise_sd:
        for n0, n in args.budget or [(20, 100)]:
            for name, module in denoisers:
                if _trained_for_another_sigma(module, sigma):
                    continue
                began = time.perf_counter()
                cert_labels, radii = _certify_all(images, module, args.classifier, args, sigma, n0, n)
                seconds = time.perf_counter() - began
                for truth_label, truths in (("true label", truth_names), ("clean prediction", clean_names)):
                    acc = certified_accuracy(cert_labels, radii, truths, radii_grid)
                    rows.append([sigma, f"{n0}/{n}", name, truth_label]
                                + [f"{100 * acc[r]:.1f}" for r in radii_grid]
                                + [f"{average_certified_radius(cert_labels, radii, truths):.3f}", f"{seconds:.0f}"])
    print(f"\nCertified accuracy (%) at radius r, alpha={args.alpha}, seed {args.seed}")
    print(text_table(["noise_sd", "N0/N", "denoiser", "ground truth"] + [f"r={r}" for r in radii_grid] + ["ACR", "s"], rows))
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    import torch

    from ..denoisers.loading import load_denoiser

    if args.threads:
        torch.set_num_threads(args.threads)
    denoisers: List[tuple] = [("none", None)] if args.dataset == "fashion-mnist" else []
    for spec in args.denoiser:
        if spec == "nl-means":
            denoisers.append(("nl-means", None))
        else:
            denoisers.append((spec, load_denoiser(spec, device="cpu")))
    if args.dataset == "photos":
        return _cmd_eval_photos(args, denoisers)
    if any(name == "nl-means" for name, _ in denoisers[1:]):
        raise InvalidParameterError("nl-means evaluation is for --dataset photos")
    return _cmd_eval_fashion_mnist(args, denoisers)


def _radii(text: str) -> list:
    try:
        radii = [float(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated radii like 0,0.25,0.5, got {text!r}") from None
    if any(not r >= 0 for r in radii):
        raise argparse.ArgumentTypeError("radii must be >= 0")
    return radii


def _budget(text: str) -> tuple:
    try:
        n0, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N0/N like 20/100, got {text!r}") from None
    if n0 < 1 or n < 1:
        raise argparse.ArgumentTypeError("N0 and N must be >= 1")
    return n0, n


def add_commands(commands: Any, argv: Sequence[str]) -> None:
    """Register ``train-denoiser`` and ``eval-denoiser`` on an argparse sub-parsers object.

    :func:`robust_api.commands.cli.build_parser` then gives them, as every sub-command, the
    global options (``-v``, ``-q``, ``--version``, before or after the command) and the exit
    statuses in their help; the option names (``--noise-sd``, ``--alpha``) are the Python API's.
    """
    train = commands.add_parser("train-denoiser", help="train a denoiser (MSE or stability objective)")
    train.add_argument("--dataset", default="fashion-mnist",
                       help="fashion-mnist, photos (scikit-image/scikit-learn photos), or a folder of images")
    train.add_argument("--noise-sd", type=float, required=True, help="σ of the training noise, in (0, 1]")
    train.add_argument("--arch", choices=("dncnn", "memnet", "drunet"), default="dncnn")
    train.add_argument("--depth", type=int, default=17, help="dncnn: convolutions (paper: 17)")
    train.add_argument("--channels", type=int, default=64, help="dncnn/memnet: feature channels (paper: 64)")
    train.add_argument("--memory-blocks", type=int, default=3, help="memnet: memory blocks (paper: 3)")
    train.add_argument("--residual-blocks", type=int, default=6, help="memnet: residual blocks per memory block")
    train.add_argument("--widths", default="64,128,256,512", help="drunet: 4 widths, comma-separated")
    train.add_argument("--blocks", type=int, default=4, help="drunet: residual blocks per scale")
    train.add_argument("--image-channels", type=int, default=3, help="folder datasets: 1 (gray) or 3 (RGB)")
    train.add_argument("--objective", choices=("mse", "stability"), default="mse")
    train.add_argument("--classifier", action="append", default=[],
                       help="surrogate for --objective stability: 'bundled' or a classifier .safetensors (repeatable)")
    train.add_argument("--init", default=None, help="start from these denoiser weights (name or path)")
    train.add_argument("--epochs", type=int, default=10)
    train.add_argument("--batch-size", type=int, default=128)
    train.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (cosine-decayed per step)")
    train.add_argument("--patch-size", type=int, default=48, help="photos/folders: training crop size")
    train.add_argument("--patches-per-epoch", type=int, default=None, help="photos/folders: crops per epoch")
    train.add_argument("--val-count", type=int, default=1000, help="fashion-mnist: test images for validation PSNR")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    train.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    train.add_argument("--checkpoint", default=None, help="resumable checkpoint file, rewritten every epoch")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.add_argument("--out", required=True, help="output .safetensors file")
    train.set_defaults(handler=_cmd_train, argv=list(argv))

    evaluate = commands.add_parser("eval-denoiser", help="PSNR, accuracy and certified accuracy of denoisers")
    evaluate.add_argument("--dataset", choices=DATASETS, default="fashion-mnist")
    evaluate.add_argument("--denoiser", action="append", default=[],
                          help="shipped name, file, or nl-means (repeatable); 'none' is always included for fashion-mnist")
    evaluate.add_argument("--noise-sd", type=float, action="append", required=True, help="σ (repeatable)")
    evaluate.add_argument("--classifier", default="bundled", help="fashion-mnist: 'bundled' or a classifier file")
    evaluate.add_argument("--num-images", type=int, default=500, help="fashion-mnist: test images")
    evaluate.add_argument("--budget", type=_budget, action="append", default=None,
                          help="N0/N for certification (repeatable; default 20/100)")
    evaluate.add_argument("--alpha", type=float, default=0.001)
    evaluate.add_argument("--radii", type=_radii, default=[0.0, 0.25, 0.5, 0.75, 1.0],
                          help="radii of the certified-accuracy columns, comma-separated (default 0,0.25,0.5,0.75,1)")
    evaluate.add_argument("--photos", default=None, help="photos: comma-separated names (default: the held-out ones)")
    evaluate.add_argument("--seed", type=int, default=0)
    evaluate.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    evaluate.set_defaults(handler=_cmd_eval)
