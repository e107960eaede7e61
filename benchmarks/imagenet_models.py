"""Verification of the EfficientNet-Lite ImageNet classifiers (robust_api.models.imagenet).

Prints markdown tables:

1. Clean accuracy on photos found offline, labelled by hand. Each photo below was looked at and
   given the ImageNet classes that correctly name its main subject (several when ImageNet has
   more than one fitting class, e.g. tabby / tiger cat / Egyptian cat for a tabby cat); a
   prediction counts as correct when it is one of them. Photos whose subject has no ImageNet
   class (a toy kite, a marigold, a nuthatch, landscapes without a fitting class, drawings)
   are left out. Two views: the whole photo through the classifier's own preprocessing
   (central square, resized to the model's input), and the 224² center crop of the photo
   resized to a shorter side of 256 (the ImageNet evaluation protocol).
2. The implementation choices checked against those labels: TensorFlow "same" padding versus
   PyTorch's symmetric padding on the stride-2 convolutions, and the TF-Lite normalisation
   (x·255 − 127)/128 versus ImageNet mean/std: top-1, top-5 and the mean probability that the
   model gives the accepted classes.
3. Agreement between lite0, lite1 and lite2 (same top-1 class) on every installed catalogued
   photo (robust_api.denoisers.photos: the 224² center views and all five evaluation views of
   each split) plus the labelled photos.
4. Milliseconds per image on the CPU, batches of --batch 224² images (each model resizes them
   to its own input), with and without channels_last, --threads threads (default 2), median of
   --repeats timed runs after one warm-up.

Needs: pip install 'robust-api[imagenet]' scikit-image; the Debian photo packages
(robust_api.denoisers.photos.DEBIAN_PACKAGES) for the photos that are not scikit-image's.

Run:  python benchmarks/imagenet_models.py [--threads 2] [--batch 16] [--repeats 3] [--no-timing]
"""

from __future__ import annotations

import argparse
import itertools
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from robust_api.images import as_image  # noqa: E402
from robust_api.models.efficientnet_lite import build_efficientnet_lite  # noqa: E402
from robust_api.models.imagenet import IMAGENET_MODELS, imagenet_class_names, load_imagenet_classifier  # noqa: E402

_BG = "/usr/share/backgrounds"
_CV = "/usr/share/doc/opencv-doc/examples/data"
_KDE = "/usr/share/wallpapers"

#: (photo, source: "skimage:<name>" or a file, accepted ImageNet classes), labelled by hand.
LABELLED = (
    ("chelsea", "skimage:chelsea", ("tabby", "tiger cat", "Egyptian cat")),
    ("coffee", "skimage:coffee", ("espresso", "cup", "coffee mug")),
    ("rocket", "skimage:rocket", ("missile", "projectile")),
    ("baboon (a mandrill)", f"{_CV}/baboon.jpg", ("baboon",)),
    ("fruits", f"{_CV}/fruits.jpg", ("orange", "lemon")),
    ("orange", f"{_CV}/orange.jpg", ("orange",)),
    ("squirrel (red squirrel)", f"{_CV}/squirrel_cls.jpg", ("fox squirrel",)),
    ("messi (footballer kicking)", f"{_CV}/messi5.jpg", ("soccer ball",)),
    ("chicky (a Pekingese-like dog)", f"{_CV}/chicky_512.png",
     ("Pekinese", "Shih-Tzu", "Lhasa", "Tibetan terrier", "Brabancon griffon")),
    ("home (domed palace)", f"{_CV}/home.jpg", ("palace", "mosque", "dome")),
    ("Dragonfly", f"{_BG}/Dragonfly_by_Bolly.jpg", ("dragonfly",)),
    ("Picture_0B (fig in a bowl)", f"{_BG}/Picture_0B_by_freespace.jpg", ("fig",)),
    ("friends (two spaniels)", f"{_BG}/friends_by_Aitzol_Berasategi.jpg", ("cocker spaniel", "Sussex spaniel")),
    ("greentock (clock)", f"{_BG}/greentock_by_Peter_Nerlich.jpg", ("wall clock", "analog clock")),
    ("Wine (drum, wine bottle)", f"{_BG}/Wine_by_Jakkub_Mede.jpg", ("drum", "wine bottle")),
    ("aitzgorri (mountains)", f"{_BG}/aitzgorri_by_Aitzol_Berasategi.jpg", ("alp", "valley")),
    ("picosdeeuropa (mountains)", f"{_BG}/picosdeeuropa_by_Aitzol_Berasategi.jpg", ("alp", "valley")),
    ("LadyBird", f"{_BG}/mate/nature/LadyBird.jpg", ("ladybug",)),
    ("YellowFlower", f"{_BG}/mate/nature/YellowFlower.jpg", ("daisy",)),
    ("FreshFlower (gerbera)", f"{_BG}/mate/nature/FreshFlower.jpg", ("daisy",)),
    ("ColorfulCups", f"{_KDE}/ColorfulCups/contents/images/2560x1600.jpg", ("cup", "coffee mug")),
    ("ColdRipple (pier)", f"{_KDE}/ColdRipple/contents/images/2560x1600.jpg", ("pier", "dock")),
    ("EveningGlow (rowing boats)", f"{_KDE}/EveningGlow/contents/images/2560x1600.jpg",
     ("canoe", "paddle", "lakeside", "boathouse")),
)

_IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
_IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def load_labelled():
    """[(name, float32 [1, 3, H, W] tensor in [0, 1], accepted class indices)] of installed photos."""
    names = imagenet_class_names()
    index = {name: i for i, name in enumerate(names)}
    photos, missing = [], []
    for name, source, accepted in LABELLED:
        unknown = [a for a in accepted if a not in index]
        if unknown:
            raise SystemExit(f"{name}: {unknown} are not ImageNet class names")
        if source.startswith("skimage:"):
            from skimage import data

            array = getattr(data, source.split(":", 1)[1])()
        elif Path(source).is_file():
            array = source
        else:
            missing.append(source)
            continue
        image = as_image(array)  # the SDK's own conversion: float32 [H, W, C] in [0, 1]
        tensor = torch.from_numpy(image).permute(2, 0, 1)[None]
        photos.append((name, tensor.expand(-1, 3, -1, -1).contiguous(), {index[a] for a in accepted}))
    return photos, missing


def center_crop_224(x: torch.Tensor) -> torch.Tensor:
    """The ImageNet evaluation view: shorter side resized to 256, central 224² crop."""
    height, width = x.shape[-2:]
    scale = 256 / min(height, width)
    size = (max(256, round(height * scale)), max(256, round(width * scale)))
    x = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False).clamp(0, 1)
    top, left = (size[0] - 224) // 2, (size[1] - 224) // 2
    return x[..., top:top + 224, left:left + 224]


def catalogue_crops():
    """(center views [N, 3, 224, 224], all views [M, 3, 224, 224]) of the installed catalogued photos."""
    try:
        from robust_api.denoisers.photos import SPLITS, evaluation_crops, installed_photos
    except ImportError as exc:
        print(f"(no photo catalogue: {exc})")
        return None, None
    if not installed_photos():
        return None, None
    crops, names = [], []
    for split in SPLITS:
        if installed_photos(split):
            array, split_names = evaluation_crops(split)
            crops.append(array)
            names += split_names
    views = torch.from_numpy(np.concatenate(crops)).permute(0, 3, 1, 2).float() / 255
    center = torch.tensor([n.endswith("/center") for n in names])
    return views[center], views


@torch.inference_mode()
def logits_of(model, batch: torch.Tensor, chunk: int = 16) -> torch.Tensor:
    return torch.cat([model(batch[i:i + chunk]) for i in range(0, len(batch), chunk)])


def accuracy_table(models, photos):
    names = imagenet_class_names()
    print("\n### Clean accuracy on hand-labelled photos\n")
    print(f"{len(photos)} photos; correct = top-1 (top-5) among the accepted classes.\n")
    print("| view | " + " | ".join(models) + " |")
    print("|---|" + "---|" * len(models))
    whole_top1 = {}
    center = torch.cat([center_crop_224(x) for _, x, _ in photos])
    for view in ("whole photo", "224² center crop"):
        cells = []
        for model_name, model in models.items():
            batch = torch.cat([model.resize(x) for _, x, _ in photos]) if view == "whole photo" else center
            ranked = logits_of(model, batch).topk(5, dim=1).indices.tolist()
            top1 = sum(r[0] in accepted for r, (_, _, accepted) in zip(ranked, photos))
            top5 = sum(bool(accepted & set(r)) for r, (_, _, accepted) in zip(ranked, photos))
            if view == "whole photo":
                whole_top1[model_name] = [r[0] for r in ranked]
            cells.append(f"{top1}/{len(photos)} ({top5}/{len(photos)})")
        print(f"| {view} | " + " | ".join(cells) + " |")
    print("\nTop-1 answers (whole photo; `*` = accepted):\n")
    print("| photo | accepted | " + " | ".join(models) + " |")
    print("|---|---|" + "---|" * len(models))
    for i, (photo, _, accepted) in enumerate(photos):
        answers = [names[whole_top1[m][i]] + (" *" if whole_top1[m][i] in accepted else "") for m in models]
        print(f"| {photo} | {', '.join(names[i] for i in sorted(accepted))} | " + " | ".join(answers) + " |")


def variants_table(models, photos):
    print("\n### Padding and normalisation, checked on the labelled photos\n")
    print("top-1 / top-5 correct, and the mean probability given to the accepted classes (whole photo).\n")
    print("| model | padding | normalisation | top-1 | top-5 | mean p(accepted) |")
    print("|---|---|---|---|---|---|")
    for model_name, model in models.items():
        resized = torch.cat([model.resize(x) for _, x, _ in photos])
        inputs = {"tf-lite": (resized * 255 - 127) / 128, "imagenet": (resized - _IMAGENET_MEAN) / _IMAGENET_STD}
        for same, norm in itertools.product((True, False), ("tf-lite", "imagenet")):
            network = build_efficientnet_lite(model_name, same_padding=same)
            network.load_state_dict(model.network.state_dict(), strict=True)
            network.eval()
            probabilities = logits_of(network, inputs[norm]).softmax(1)
            ranked = probabilities.topk(5, dim=1).indices.tolist()
            top1 = sum(r[0] in accepted for r, (_, _, accepted) in zip(ranked, photos))
            top5 = sum(bool(accepted & set(r)) for r, (_, _, accepted) in zip(ranked, photos))
            mass = statistics.mean(float(p[sorted(accepted)].sum())
                                   for p, (_, _, accepted) in zip(probabilities, photos))
            label = "TF same" if same else "symmetric"
            shipped = " (shipped)" if same and norm == "tf-lite" else ""
            print(f"| {model_name} | {label}{shipped} | {norm} | {top1}/{len(photos)} | {top5}/{len(photos)} | "
                  f"{mass:.3f} |")


def agreement_table(models, photos):
    print("\n### Agreement between the models (same top-1 class)\n")
    sets = []
    center, views = catalogue_crops()
    if center is not None:
        sets.append(("catalogue photos, 224² center view", center))
        sets.append(("catalogue photos, all 5 evaluation views", views))
    labelled = torch.cat([center_crop_224(x) for _, x, _ in photos])
    sets.append(("labelled photos, 224² center view", labelled))
    pairs = list(itertools.combinations(models, 2))
    print("| images | n | " + " | ".join(f"{a[-5:]}={b[-5:]}" for a, b in pairs) + " | all three |")
    print("|---|---|" + "---|" * (len(pairs) + 1))
    for label, batch in sets:
        top1 = {name: logits_of(model, batch).argmax(1) for name, model in models.items()}
        cells = [f"{int((top1[a] == top1[b]).sum())}" for a, b in pairs]
        stacked = torch.stack(list(top1.values()))
        everyone = int((stacked == stacked[0]).all(0).sum())
        print(f"| {label} | {len(batch)} | " + " | ".join(cells) + f" | {everyone} |")


def timing_table(args):
    print(f"\n### Milliseconds per 224² image on the CPU ({args.threads} threads, batches of {args.batch})\n")
    print("| model | input size | contiguous (NCHW) | channels_last | speed-up |")
    print("|---|---|---|---|---|")
    generator = torch.Generator().manual_seed(0)
    batch = torch.rand(args.batch, 3, 224, 224, generator=generator)
    for name in IMAGENET_MODELS:
        times = {}
        for channels_last in (False, True):
            model = load_imagenet_classifier(name, device="cpu", channels_last=channels_last)
            runs = []
            with torch.inference_mode():
                model(batch)  # warm-up
                for _ in range(args.repeats):
                    start = time.perf_counter()
                    model(batch)
                    runs.append(time.perf_counter() - start)
            times[channels_last] = 1000 * statistics.median(runs) / args.batch
        print(f"| {name} | {model.input_size}² | {times[False]:.1f} | {times[True]:.1f} | "
              f"{times[False] / times[True]:.2f}× |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-timing", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"## EfficientNet-Lite verification (torch {torch.__version__}, {platform.machine()}, "
          f"{os.cpu_count()} CPUs, {args.threads} threads, load average {load} at the start)")
    photos, missing = load_labelled()
    if missing:
        print(f"\n(not installed, left out: {', '.join(missing)})")
    models = {name: load_imagenet_classifier(name, device="cpu") for name in IMAGENET_MODELS}
    accuracy_table(models, photos)
    variants_table(models, photos)
    agreement_table(models, photos)
    if not args.no_timing:
        timing_table(args)


if __name__ == "__main__":
    main()
