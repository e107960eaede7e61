"""Certify with your own PyTorch model, then with any Python function, then offline from the log.

Shows the two ways to bring a classifier of your own:

1. a ``torch.nn.Module``: ``RobustAPI("local", model=module, class_names=[...])``. The module
   gets float32 batches ``[B, C, H, W]`` in [0, 1] (C = the image's channels: 1 for these
   grayscale PNGs, 3 for RGB), on ``device`` (default: CUDA when available, else CPU), in eval
   mode, and returns logits ``[B, K]``; ``class_names`` names the K outputs. ``input_shape=(C,
   H, W)`` makes images of another size a clear error before any query.
2. any Python callable: ``RobustAPI(fn)``, where ``fn`` maps float32 NumPy images
   ``[N, H, W, C]`` in [0, 1] to N ``str`` labels (a cloud client, a scikit-learn model, ...).

Here the module is ``MyClassifier``, a small wrapper defined below around the bundled
Fashion-MNIST CNN (its weights loaded with ``robust_api.providers.local.load_classifier``; pass
``--untrained`` to use ``TinyCNN``, a from-scratch network with random weights, instead). The
script predicts and certifies one image, shows the votes (``cert.counts``), re-certifies the
call offline from the query log (no model, no query: the same label and radius) and certifies
the same image through the callable form with the same seed. Runs on CPU in a few seconds.

Run from the repository root:

    python examples/local_pytorch_model.py
    python examples/local_pytorch_model.py examples/images/fmnist_test_00018_bag.png --noise-sd 0.25 --denoiser fashion-mnist-dncnn-0.25
    python examples/local_pytorch_model.py --log /tmp/my_model.sqlite3   # keep the log in a file
"""

from __future__ import annotations

import argparse
import sys
from importlib import resources
from pathlib import Path
from typing import Optional, Sequence

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run from a checkout without `pip install`
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

import robust_api  # noqa: E402
from robust_api import ABSTAIN, RobustAPI  # noqa: E402
from robust_api.datasets import FASHION_MNIST_CLASSES  # noqa: E402

CLASS_NAMES = list(FASHION_MNIST_CLASSES)  # "T-shirt/top", "Trouser", ..., "Ankle boot"


class MyClassifier(nn.Module):
    """Your model: float [B, 1, 28, 28] in [0, 1] → logits [B, 10].

    It wraps the bundled Fashion-MNIST CNN and divides its logits by a temperature (which
    changes the reported scores, not the top class). Any ``nn.Module`` with this contract works.
    """

    def __init__(self, backbone: nn.Module, temperature: float = 1.0):
        super().__init__()
        self.backbone = backbone
        self.temperature = float(temperature)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x) / self.temperature


class TinyCNN(nn.Module):
    """A from-scratch network (random weights unless you train it): [B, 1, 28, 28] → [B, 10]."""

    def __init__(self, classes: int = 10):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(16 * 7 * 7, classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def build_model(untrained: bool) -> nn.Module:
    if untrained:
        torch.manual_seed(0)
        return TinyCNN().eval()
    from robust_api.providers.local import BUNDLED_MODEL, load_classifier

    weights = Path(str(resources.files("robust_api").joinpath("assets", BUNDLED_MODEL)))
    backbone, names, input_shape = load_classifier(weights)  # module (eval, CPU), class names, (C, H, W)
    assert list(names) == CLASS_NAMES and tuple(input_shape) == (1, 28, 28)
    return MyClassifier(backbone, temperature=2.0).eval()


def _label(label) -> str:
    return "ABSTAIN" if label is ABSTAIN else str(label)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Certify with your own PyTorch model or Python function.")
    parser.add_argument("image", nargs="?", type=Path,
                        default=ROOT / "examples" / "images" / "fmnist_test_00002_trouser.png")
    parser.add_argument("--noise-sd", type=float, default=0.12)
    parser.add_argument("--N0", type=int, default=20)
    parser.add_argument("--N", type=int, default=100)
    parser.add_argument("--alpha", type=float, default=0.001)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--denoiser", default=None, help="optional denoiser in front of the model (e.g. fashion-mnist-dncnn-0.25)")
    parser.add_argument("--device", default="cpu", help="torch device of the model (default cpu; 'cuda' if you have one)")
    parser.add_argument("--log", default=None, help="query log file (default: kept in memory)")
    parser.add_argument("--untrained", action="store_true", help="use TinyCNN with random weights instead")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    module = build_model(args.untrained)
    log = args.log if args.log else False

    # 1. a torch.nn.Module
    api = RobustAPI("local", model=module, class_names=CLASS_NAMES, input_shape=(1, 28, 28), denoiser=args.denoiser,
                    seed=args.seed, log=log, device=args.device)
    print(f"model: {api.provider.identity} ({sum(p.numel() for p in module.parameters())} parameters), "
          f"version {api.provider.model_version}, device {args.device}")
    print(f"image: {args.image.name}, noise_sd={args.noise_sd}, seed={args.seed}")
    pred = api.predict(args.image, N=args.N, noise_sd=args.noise_sd, alpha=args.alpha)
    print(f"predict: label={_label(pred.label)} counts={dict(pred.counts)} queries={pred.queries}")
    cert = api.certify(args.image, noise_sd=args.noise_sd, N0=args.N0, N=args.N, alpha=args.alpha)
    print(f"certify: label={_label(cert.label)} radius={cert.radius:.6f} p_lower={cert.p_lower:.6f} "
          f"queries={cert.queries}")
    print(f"cert.counts={dict(cert.counts)} (selection votes: {dict(cert.selection_counts)})")

    # 2. offline: re-certify the logged call, with no model and no query
    calls = list(robust_api.open_log(args.log)) if args.log else list(api.log)
    logged = [c for c in calls if c.kind == "certify"][-1]
    offline = RobustAPI("local", online=False).certify(logged)
    same = (offline.label, offline.radius) == (cert.label, cert.radius)
    print(f"offline: label={_label(offline.label)} radius={offline.radius:.6f} queries={offline.queries} "
          f"(from {len(logged)} logged records); identical to online: {same}")

    # 3. any Python callable: float32 [N, H, W, C] in [0, 1] -> N str labels
    device = torch.device(args.device)
    module.to(device)

    def classify(images: np.ndarray) -> list:
        with torch.inference_mode():
            logits = module(torch.from_numpy(images).permute(0, 3, 1, 2).to(device))
        return [CLASS_NAMES[i] for i in logits.argmax(1).tolist()]

    fn_api = RobustAPI(classify, denoiser=args.denoiser, seed=args.seed, log=False, device=args.device)
    fn_cert = fn_api.certify(args.image, noise_sd=args.noise_sd, N0=args.N0, N=args.N, alpha=args.alpha)
    print(f"callable: label={_label(fn_cert.label)} radius={fn_cert.radius:.6f} counts={dict(fn_cert.counts)} "
          f"(same noisy copies, seed {args.seed}); same as the nn.Module: "
          f"{(fn_cert.label, fn_cert.radius) == (cert.label, cert.radius)}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
