"""Train a small DnCNN denoiser, save it, load it back and certify an image with it.

Shows the denoiser workflow of ``robust_api.denoisers`` in Python:

1. data: Fashion-MNIST from the Debian package ``dataset-fashion-mnist`` (training split for
   training, test split for held-out PSNR; ``ROBUST_API_FASHION_MNIST_DIR`` points elsewhere).
   Without it, the script falls back to the photos scikit-image and scikit-learn ship (gray
   28×28 crops; held-out photos for PSNR), and without those it stops with a clear message.
2. ``DnCNN(image_channels=1, depth=..., channels=...)`` trained with
   ``train_denoiser(model, images, noise_sd=..., objective="mse" | "stability")``; the
   stability objective uses the bundled Fashion-MNIST classifier as its surrogate.
3. PSNR on held-out images before (the noisy images themselves) and after denoising.
4. ``save_denoiser`` writes a safetensors file (weights, architecture, σ, recipe), which
   ``robust_api.load_denoiser(path)`` reads back: the same PSNR is checked.
5. ``RobustAPI("local", denoiser=path)`` certifies one example image with the trained denoiser
   in front of the bundled classifier (and, for comparison, without a denoiser).

The defaults are a quick demonstration (a tiny network, 5,000 images, 3 epochs: about 10–20 s
on 2 CPU cores); the PSNR gain is real but far from a finished model. A real run, close to the
recipe of the shipped ``fashion-mnist-dncnn-mse-0.25`` (a few minutes per epoch on 2 cores):

    python examples/train_denoiser.py --train-images 60000 --depth 10 --channels 32 --epochs 4 --batch-size 128 --out mse.safetensors

Run from the repository root:

    python examples/train_denoiser.py                          # writes ./dncnn_example_0.25.safetensors
    python examples/train_denoiser.py --out /tmp/d.safetensors --objective stability --init /tmp/mse.safetensors
    python examples/train_denoiser.py --dataset photos         # the fallback data, on purpose
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run from a checkout without `pip install`
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch import nn  # noqa: E402

import robust_api  # noqa: E402
from robust_api import ABSTAIN, RobustAPI  # noqa: E402
from robust_api.denoisers import DnCNN, psnr, save_denoiser, train_denoiser  # noqa: E402

DEFAULT_IMAGE = ROOT / "examples" / "images" / "fmnist_test_00006_coat.png"


def fashion_mnist_data(train_count: int, val_count: int):
    """(train [n, 1, 28, 28], held-out [m, 1, 28, 28], description), or None when not installed."""
    from robust_api.denoisers.data import fashion_mnist_tensors

    try:
        train, _ = fashion_mnist_tensors("train")
        test, _ = fashion_mnist_tensors("test")
    except FileNotFoundError as exc:
        print(f"Fashion-MNIST not found ({exc})", file=sys.stderr)
        return None
    generator = torch.Generator().manual_seed(0)  # a random subset, not the first images
    train = train[torch.randperm(len(train), generator=generator)[:train_count]]
    return train, test[:val_count], f"Fashion-MNIST: {len(train)} training images, {min(val_count, len(test))} test images"


def photo_data(train_count: int, val_count: int):
    """Gray 28×28 crops of the photos scikit-image / scikit-learn ship, or None without them."""
    from robust_api.denoisers.data import HELD_OUT_PHOTOS, TRAIN_PHOTOS, load_photos

    try:
        train_photos, val_photos = load_photos(TRAIN_PHOTOS), load_photos(HELD_OUT_PHOTOS)
    except robust_api.MissingDependencyError as exc:
        print(f"photos unavailable: {exc}", file=sys.stderr)
        return None

    def crops(photos, count, seed):
        generator = torch.Generator().manual_seed(seed)
        grays = [photo.mean(0, keepdim=True) for photo in photos]  # [1, H, W] each
        out = []
        for index in range(count):
            gray = grays[index % len(grays)]
            top = int(torch.randint(gray.shape[1] - 28 + 1, (1,), generator=generator))
            left = int(torch.randint(gray.shape[2] - 28 + 1, (1,), generator=generator))
            out.append(gray[:, top : top + 28, left : left + 28])
        return torch.stack(out).contiguous()

    return (crops(train_photos, train_count, 0), crops(val_photos, val_count, 1),
            f"photos: {train_count} gray 28×28 crops of {', '.join(TRAIN_PHOTOS)}; held out: {', '.join(HELD_OUT_PHOTOS)}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Train a small DnCNN denoiser and certify with it.")
    parser.add_argument("--dataset", choices=("auto", "fashion-mnist", "photos"), default="auto",
                        help="auto: Fashion-MNIST if installed, else photos (default auto)")
    parser.add_argument("--noise-sd", type=float, default=0.25)
    parser.add_argument("--objective", choices=("mse", "stability"), default="mse")
    parser.add_argument("--init", default=None, help="start from this denoiser file (e.g. an MSE model for stability)")
    parser.add_argument("--depth", type=int, default=5, help="DnCNN convolutions (shipped: 10)")
    parser.add_argument("--channels", type=int, default=16, help="DnCNN hidden channels (shipped: 32)")
    parser.add_argument("--train-images", type=int, default=5000)
    parser.add_argument("--val-images", type=int, default=200)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="torch device (default cpu; 'cuda' if you have one)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--out", type=Path, default=None,
                        help="where to save the denoiser (default ./dncnn_example_<noise-sd>.safetensors)")
    parser.add_argument("--image", type=Path, default=DEFAULT_IMAGE, help="the image to certify at the end")
    parser.add_argument("--N0", type=int, default=20)
    parser.add_argument("--N", type=int, default=100)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    began = time.perf_counter()

    data = None
    if args.dataset in ("auto", "fashion-mnist"):
        data = fashion_mnist_data(args.train_images, args.val_images)
    if data is None and args.dataset in ("auto", "photos"):
        data = photo_data(args.train_images, args.val_images)
    if data is None:
        print("error: no training data. Install Fashion-MNIST ('apt-get install dataset-fashion-mnist', or set "
              "ROBUST_API_FASHION_MNIST_DIR to a folder with its IDX files) or the photos "
              "(pip install 'robust-api[train]'), then run again.", file=sys.stderr)
        return 2
    train, val, description = data
    print(f"data: {description}")

    if args.init:
        model = robust_api.load_denoiser(args.init, device="cpu")
    else:
        torch.manual_seed(args.seed)
        model = DnCNN(image_channels=1, depth=args.depth, channels=args.channels)
    classifiers = []
    if args.objective == "stability":  # the surrogate: the bundled classifier, frozen
        from importlib import resources

        from robust_api.providers.local import BUNDLED_MODEL, load_classifier

        weights = Path(str(resources.files("robust_api").joinpath("assets", BUNDLED_MODEL)))
        classifiers = [load_classifier(weights)[0]]
    parameters = sum(p.numel() for p in model.parameters())
    print(f"model: {model.arch} {model.config()} ({parameters:,} parameters), objective {args.objective}, "
          f"noise_sd={args.noise_sd}")

    val = val.to(args.device)
    before = psnr(nn.Identity(), val, args.noise_sd, seed=args.seed)  # the noisy images, undenoised
    history = train_denoiser(
        model, train, noise_sd=args.noise_sd, objective=args.objective, classifiers=classifiers,
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed, device=args.device,
        val_images=val,
    )
    for stats in history:
        print(f"epoch {stats.epoch}: loss {stats.loss:.5f}, held-out PSNR {stats.val_psnr:.2f} dB, {stats.seconds:.1f} s")
    after = psnr(model, val, args.noise_sd, seed=args.seed)
    print(f"PSNR before: {before:.2f} dB (noisy), after: {after:.2f} dB (denoised), on {len(val)} held-out images")

    out = args.out or Path(f"dncnn_example_{args.noise_sd:g}.safetensors")
    path = save_denoiser(model.to("cpu"), out, noise_sd=args.noise_sd, extra_metadata={
        "dataset": description, "objective": args.objective,
        "recipe": "python examples/train_denoiser.py " + " ".join(sys.argv[1:] if argv is None else argv),
    })
    print(f"saved {path} ({path.stat().st_size:,} bytes)")
    loaded = robust_api.load_denoiser(path, device=args.device)
    reloaded = psnr(loaded, val, args.noise_sd, seed=args.seed)
    print(f"loaded back: {loaded.arch} {loaded.config()}, noise_sd={loaded.noise_sd}, PSNR {reloaded:.2f} dB")

    results = {}
    for name, denoiser in (("trained denoiser", str(path)), ("no denoiser", None)):
        api = RobustAPI("local", denoiser=denoiser, seed=args.seed, log=False, device=args.device)
        results[name] = cert = api.certify(args.image, noise_sd=args.noise_sd, N0=args.N0, N=args.N)
        label = "ABSTAIN" if cert.label is ABSTAIN else cert.label
        print(f"certify {args.image.name} with {name}: label={label} radius={cert.radius:.3f} "
              f"counts={dict(cert.counts)}")
    print(f"done in {time.perf_counter() - began:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
