"""Train the bundled Fashion-MNIST classifier and save it as safetensors.

Usage::

    python -m robust_api.commands.train_fashion_mnist --out PATH \\
        [--epochs E] [--batch-size B] [--lr LR] [--seed S] [--threads T] [--no-flip]

The model is trained on the clean 60k training images (no noise augmentation;
the only augmentation is an optional random horizontal flip), so it is an
ordinary off-the-shelf classifier, not a noise-robust one. Test accuracy on
the 10k test set is measured after the last epoch and stored in the file's
metadata.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from robust_api.datasets import FASHION_MNIST_CLASSES, load_fashion_mnist
from robust_api.models.fashion_mnist import ARCH_NAME, CLASSIFIER_FORMAT, build

__all__ = ["FORMAT", "EpochStats", "to_tensor", "evaluate", "train", "save_classifier", "main"]

logger = logging.getLogger(__name__)

#: Value of the ``"format"`` metadata entry of saved classifier files.
FORMAT = CLASSIFIER_FORMAT

_MODULE = "robust_api.commands.train_fashion_mnist"


@dataclass
class EpochStats:
    """Summary of one training epoch.

    Attributes:
        epoch: 1-based epoch number.
        train_loss: mean cross-entropy over the epoch's training batches (>= 0).
        train_acc: fraction of training examples classified correctly during
            the epoch (in training mode), in [0, 1].
        test_acc: accuracy on the test set after the epoch (eval mode), in [0, 1].
        seconds: wall time of the epoch including evaluation.
    """

    epoch: int
    train_loss: float
    train_acc: float
    test_acc: float
    seconds: float


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """Convert uint8 images to model input.

    Args:
        images: uint8 array of shape ``[N, 28, 28]`` with values in [0, 255].

    Returns:
        float32 tensor of shape ``[N, 1, 28, 28]`` with values in [0, 1].
    """
    if images.dtype != np.uint8 or images.ndim != 3:
        raise ValueError(f"expected uint8 [N, H, W] images, got {images.dtype} {images.shape}")
    return torch.from_numpy(images).to(torch.float32).div_(255.0).unsqueeze(1)


@torch.no_grad()
def evaluate(
    model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000
) -> float:
    """Return the classification accuracy of ``model`` in eval mode.

    Args:
        model: classifier mapping float32 ``[B, 1, 28, 28]`` in [0, 1] to logits ``[B, C]``.
        x: float32 tensor ``[N, 1, 28, 28]`` with values in [0, 1].
        y: int64 tensor ``[N]`` of labels in 0..C-1.
        batch_size: evaluation batch size (> 0).

    Returns:
        Accuracy as a Python float in [0, 1]. The model's train/eval mode is
        restored afterwards.
    """
    was_training = model.training
    model.eval()
    correct = 0
    for start in range(0, x.shape[0], batch_size):
        logits = model(x[start : start + batch_size])
        correct += int((logits.argmax(dim=1) == y[start : start + batch_size]).sum())
    model.train(was_training)
    return correct / max(1, x.shape[0])


def train(
    epochs: int = 10,
    batch_size: int = 128,
    lr: float = 3e-3,
    seed: int = 0,
    flip: bool = True,
    root: Optional[str] = None,
    on_epoch: Optional[Callable[[EpochStats], None]] = None,
) -> tuple:
    """Train a fresh FashionMNISTCNN on the clean Fashion-MNIST training set.

    Optimizer: AdamW (weight decay 5e-4) with a one-cycle learning-rate
    schedule peaking at ``lr``; loss: cross-entropy with label smoothing 0.05.
    Data order and augmentation (random horizontal flips) are drawn from a
    ``torch.Generator`` seeded with ``seed``; model init and dropout use the
    global RNG seeded by ``torch.manual_seed(seed)``.

    Args:
        epochs: number of passes over the 60k training images (>= 1).
        batch_size: minibatch size (>= 1).
        lr: peak learning rate (> 0).
        seed: integer RNG seed.
        flip: whether to randomly flip training images horizontally (p=0.5).
        root: Fashion-MNIST directory (see :func:`robust_api.datasets.load_fashion_mnist`).
        on_epoch: optional callback invoked with an :class:`EpochStats` after each epoch.

    Returns:
        ``(model, history)``: the trained model in eval mode (float32, CPU)
        and the list of :class:`EpochStats`; ``history[-1].test_acc`` is the
        final 10k test accuracy in [0, 1].
    """
    if epochs < 1 or batch_size < 1 or not lr > 0:
        raise ValueError("epochs and batch_size must be >= 1 and lr > 0")
    torch.manual_seed(seed)
    np.random.seed(seed)
    gen = torch.Generator().manual_seed(seed)

    train_x, train_y = load_fashion_mnist("train", root=root)
    test_x, test_y = load_fashion_mnist("test", root=root)
    xtr, ytr = to_tensor(train_x), torch.from_numpy(train_y)
    xte, yte = to_tensor(test_x), torch.from_numpy(test_y)
    n = xtr.shape[0]
    steps_per_epoch = math.ceil(n / batch_size)

    model = build(ARCH_NAME)
    model.train()
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim <= 1 else decay).append(p)
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 5e-4}, {"params": no_decay, "weight_decay": 0.0}],
        lr=lr,
    )
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=lr, epochs=epochs, steps_per_epoch=steps_per_epoch, pct_start=0.2
    )
    logger.info(
        "training %s: %d params, %d epochs, batch %d, lr %g, seed %d",
        ARCH_NAME, sum(p.numel() for p in model.parameters()), epochs, batch_size, lr, seed,
    )

    history: List[EpochStats] = []
    for epoch in range(1, epochs + 1):
        t0 = time.perf_counter()
        perm = torch.randperm(n, generator=gen)
        flips = torch.rand(n, generator=gen) < 0.5 if flip else None
        loss_sum, correct = 0.0, 0
        for start in range(0, n, batch_size):
            idx = perm[start : start + batch_size]
            xb, yb = xtr[idx], ytr[idx]
            if flips is not None:
                fb = flips[idx]
                xb[fb] = xb[fb].flip(-1)
            logits = model(xb)
            loss = F.cross_entropy(logits, yb, label_smoothing=0.05)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += float(loss.detach()) * len(idx)
            correct += int((logits.detach().argmax(1) == yb).sum())
        test_acc = evaluate(model, xte, yte)
        stats = EpochStats(
            epoch=epoch,
            train_loss=loss_sum / n,
            train_acc=correct / n,
            test_acc=test_acc,
            seconds=time.perf_counter() - t0,
        )
        history.append(stats)
        logger.info("%s", stats)
        if on_epoch is not None:
            on_epoch(stats)
    model.eval()
    return model, history


def save_classifier(
    model: torch.nn.Module,
    path: str,
    test_accuracy: float,
    trained_by: str,
    seed: int,
) -> Dict[str, str]:
    """Write ``model.state_dict()`` and metadata to a safetensors file.

    Args:
        model: trained FashionMNISTCNN.
        path: output file path; parent directories are created.
        test_accuracy: clean test accuracy in [0, 1], stored as ``"%.4f"``.
        trained_by: command line that produced the model.
        seed: RNG seed used for training.

    Returns:
        The metadata dict (all values str) that was written, with keys
        ``format, arch, class_names, input_shape, test_accuracy, trained_by, seed``.
    """
    metadata = {
        "format": FORMAT,
        "arch": ARCH_NAME,
        "class_names": json.dumps(list(FASHION_MNIST_CLASSES)),
        "input_shape": json.dumps([1, 28, 28]),
        "test_accuracy": "%.4f" % test_accuracy,
        "trained_by": trained_by,
        "seed": str(seed),
    }
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out), metadata=metadata)
    logger.info("saved %s (%d bytes)", out, out.stat().st_size)
    return metadata


def _parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog=f"python -m {_MODULE}",
        description="Train the bundled Fashion-MNIST CNN on clean images and save it as safetensors.",
    )
    p.add_argument("--out", required=True, help="output .safetensors path")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=3e-3, help="peak learning rate (one-cycle)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    p.add_argument("--no-flip", action="store_true", help="disable random horizontal flips")
    p.add_argument("--data-dir", default=None, help="Fashion-MNIST directory (default: env/system)")
    return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry point; returns a process exit code (0 on success)."""
    raw_args = list(sys.argv[1:] if argv is None else argv)
    args = _parse_args(raw_args)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    trained_by = " ".join(["python", "-m", _MODULE] + [shlex.quote(a) for a in raw_args])

    def report(s: EpochStats) -> None:
        print(
            f"epoch {s.epoch:3d}  loss {s.train_loss:.4f}  train_acc {s.train_acc:.4f}  "
            f"test_acc {s.test_acc:.4f}  ({s.seconds:.1f}s)",
            flush=True,
        )

    t0 = time.perf_counter()
    model, history = train(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        flip=not args.no_flip,
        root=args.data_dir,
        on_epoch=report,
    )
    wall = time.perf_counter() - t0
    acc = history[-1].test_acc
    save_classifier(model, args.out, acc, trained_by, args.seed)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"final test accuracy {acc:.4f}  params {n_params}  wall {wall:.1f}s")
    print(f"wrote {args.out} ({Path(args.out).stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
