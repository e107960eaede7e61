"""Train denoisers: the MSE objective and the stability objective of denoised smoothing.

* ``objective="mse"`` — mean squared error between D(x + δ) and x (Salman et al., eq. 2).
* ``objective="stability"`` — cross-entropy between the surrogate classifiers' output on
  D(x + δ) and their own label on the clean x (Salman et al., eq. 3), averaged over the
  surrogates; the classifiers are frozen. The paper's best recipe is MSE first, then
  stability fine-tuning from those weights (``init=``).

Noisy inputs are made exactly as the SDK makes them at query time: x + σ·ε, ε ~ N(0, I), not
clipped (``clip_noisy=True`` reproduces recipes of denoisers trained on clipped copies).
``noise_sd`` may be a range (low, high): each image then gets its own σ drawn uniformly, and a
noise-level-conditioned denoiser (one with ``noise_sd_range``, e.g. PhotoNet) is told it. Each epoch's data order, crops and noise come from generators seeded with
(seed, epoch), so a run resumed from its per-epoch checkpoint continues identically.
Checkpoints are safetensors (weights and optimizer state) with JSON metadata — no pickle.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import DenoiserError, InvalidParameterError
from ..validation import check_noise_sd
from .base import DenoiserModule

__all__ = ["EpochStats", "train_denoiser", "add_noise", "denoise_with_sd", "psnr", "psnr_per_image", "OBJECTIVES"]

logger = logging.getLogger(__name__)

OBJECTIVES = ("mse", "stability")
_CHECKPOINT_FORMAT = "robust_api.denoiser-training/1"


@dataclass
class EpochStats:
    """One finished epoch: 1-based ``epoch``, mean training ``loss``, ``val_psnr`` in dB (None
    without validation images), ``lr`` at its end and wall ``seconds``."""

    epoch: int
    loss: float
    val_psnr: Optional[float]
    lr: float
    seconds: float


def add_noise(images: torch.Tensor, noise_sd: Union[float, torch.Tensor], generator: Optional[torch.Generator] = None,
              *, clip: bool = False) -> torch.Tensor:
    """x + σ·ε, ε standard normal, as the SDK gives it to a denoiser (unclipped; ``clip=True``
    clips to [0, 1]). ``images`` float [B, C, H, W] in [0, 1]; ``noise_sd`` a float or a [B]
    tensor of per-image σ."""
    noise = torch.randn(images.shape, generator=generator, device=images.device, dtype=images.dtype)
    if isinstance(noise_sd, torch.Tensor):
        noise_sd = noise_sd.to(images.device, images.dtype).reshape(-1, 1, 1, 1)
    noisy = images + noise_sd * noise
    return noisy.clamp_(0.0, 1.0) if clip else noisy


def denoise_with_sd(denoiser: nn.Module, noisy: torch.Tensor, noise_sd: Union[float, torch.Tensor]) -> torch.Tensor:
    """``denoiser(noisy)``, telling a noise-level-conditioned denoiser (one with a
    ``noise_sd_range``) the σ of each image: a float or a [B] tensor."""
    if getattr(denoiser, "noise_sd_range", None) is not None:
        return denoiser(noisy, noise_sd)
    return denoiser(noisy)


def psnr_per_image(estimate: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
    """PSNR in dB (peak 1.0) of each image of ``estimate`` against ``clean``, both [N, C, H, W]; shape [N]."""
    mse = (estimate - clean).pow(2).flatten(1).mean(1).clamp_min(1e-12)
    return -10.0 * torch.log10(mse)


@torch.no_grad()
def psnr(denoiser: nn.Module, images: torch.Tensor, noise_sd: float, *, seed: int = 0,
         batch_size: int = 256, clip: bool = False) -> float:
    """Mean PSNR (dB, peak 1.0) of ``denoiser`` on ``images`` + σ noise, averaged over images.

    Args:
        denoiser: module [B, C, H, W] → same (output clamped to [0, 1] before scoring).
        images: float [N, C, H, W] in [0, 1], on the denoiser's device.
        noise_sd: σ in [0, 1]; the noise is drawn from a generator seeded with ``seed``.
        clip: clip the noisy copies to [0, 1] before the denoiser (the SDK does not).
    """
    generator = torch.Generator(device=images.device).manual_seed(int(seed))
    was_training = denoiser.training
    denoiser.eval()
    values = []
    for start in range(0, images.shape[0], batch_size):
        clean = images[start : start + batch_size]
        out = denoise_with_sd(denoiser, add_noise(clean, noise_sd, generator, clip=clip), noise_sd).clamp(0.0, 1.0)
        values.append(psnr_per_image(out, clean))
    denoiser.train(was_training)
    return float(torch.cat(values).mean())


def _epoch_generators(seed: int, epoch: int, device: torch.device):
    mixed = (int(seed) * 1_000_003 + int(epoch) * 7919) % (2**63)
    return np.random.default_rng([int(seed), int(epoch)]), torch.Generator(device=device).manual_seed(mixed)


def _epoch_batches(images, rng: np.random.Generator, patch_size: Optional[int], patches_per_epoch: Optional[int]):
    """The epoch's training inputs as an index order (tensor data) or a stack of random crops."""
    if patch_size is None:
        return images, rng.permutation(images.shape[0])
    count = int(patches_per_epoch or len(images))
    crops = []
    for _ in range(count):
        source = images[int(rng.integers(len(images)))]
        _, height, width = source.shape
        top = int(rng.integers(height - patch_size + 1))
        left = int(rng.integers(width - patch_size + 1))
        crop = source[:, top : top + patch_size, left : left + patch_size]
        if rng.integers(2):
            crop = crop.flip(-1)
        crop = torch.rot90(crop, int(rng.integers(4)), dims=(-2, -1))
        crops.append(crop)
    return _as_float(torch.stack(crops)), np.arange(count)


def _as_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 images → float32 in [0, 1]; float images unchanged."""
    return images.float().div_(255.0) if images.dtype == torch.uint8 else images


def _cosine_lr(base_lr: float, step: int, total_steps: int) -> float:
    return 0.5 * base_lr * (1.0 + math.cos(math.pi * min(step, total_steps) / max(total_steps, 1)))


def _save_checkpoint(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, meta: dict) -> None:
    from safetensors.torch import save_file

    tensors = {f"model.{k}": v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    opt_state = optimizer.state_dict()
    for index, state in opt_state["state"].items():
        for key, value in state.items():
            tensors[f"optim.{index}.{key}"] = torch.as_tensor(value).detach().to("cpu").contiguous()
    meta = dict(meta, param_groups=opt_state["param_groups"])
    tmp = path.with_suffix(path.suffix + ".tmp")
    save_file(tensors, os.fspath(tmp), metadata={"format": _CHECKPOINT_FORMAT, "meta": json.dumps(meta)})
    os.replace(tmp, path)


def _load_checkpoint(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, device, settings: dict) -> dict:
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(os.fspath(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
    if metadata.get("format") != _CHECKPOINT_FORMAT:
        raise DenoiserError(f"{os.fspath(path)!r} is not a robust_api training checkpoint")
    meta = json.loads(metadata["meta"])
    saved = meta.get("settings")
    if isinstance(saved, dict) and "clip_noisy" not in saved:
        saved = {**saved, "clip_noisy": True}  # written before unclipped training existed: it trained on clipped copies
    if saved != settings:  # checked before the model is touched
        raise DenoiserError(
            f"checkpoint {os.fspath(path)!r} was made with {meta.get('settings')}, not {settings}; "
            "delete it or rerun with the same arguments"
        )
    tensors = load_file(os.fspath(path), device="cpu")
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")}, strict=True)
    state: dict = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value.to(device) if name != "step" else value
    optimizer.load_state_dict({"state": state, "param_groups": meta.pop("param_groups")})
    return meta


def train_denoiser(
    model: DenoiserModule,
    images: Union[torch.Tensor, Sequence[torch.Tensor]],
    *,
    noise_sd: Union[float, Tuple[float, float]],
    objective: str = "mse",
    classifiers: Sequence[nn.Module] = (),
    mse_weight: float = 0.0,
    clip_noisy: bool = False,
    epochs: int = 10,
    batch_size: int = 128,
    lr: float = 1e-3,
    seed: int = 0,
    device=None,
    patch_size: Optional[int] = None,
    patches_per_epoch: Optional[int] = None,
    val_images: Optional[torch.Tensor] = None,
    checkpoint: Optional[Union[str, os.PathLike]] = None,
    progress: Optional[Callable[[int, int, int, float], None]] = None,
) -> List[EpochStats]:
    """Train ``model`` in place to remove Gaussian noise of std ``noise_sd``.

    Args:
        model: the denoiser to train (random or pre-trained weights; moved to ``device``).
        images: training images, float in [0, 1] or uint8: a tensor [N, C, H, W] (every image
            once per epoch, shuffled) or, with ``patch_size``, a sequence of [C, H, W] tensors of
            any size ≥ patch_size from which ``patches_per_epoch`` random crops (random flips and
            90° rotations) are drawn each epoch.
        noise_sd: σ of the training noise, in (0, 1]; or a range (low, high) with 0 ≤ low < high
            ≤ 1, each image getting its own σ uniformly from it (for a denoiser with
            ``noise_sd_range``, which is told each image's σ).
        objective: ``"mse"`` or ``"stability"`` (needs ``classifiers``).
        classifiers: frozen surrogate classifiers, each [B, C, H, W] in [0, 1] → logits [B, K].
        mse_weight: with ``"stability"``, add this multiple of the MSE loss (0 = the paper's Stab).
        clip_noisy: clip the noisy copies to [0, 1] before the denoiser (the SDK does not).
        epochs, batch_size, lr: Adam with a per-step cosine schedule from ``lr`` to 0.
        seed: seeds the data order, crops and noise of every epoch.
        device: None (CUDA when available, else CPU) or a torch device.
        val_images: optional float [M, C, H, W] in [0, 1]; PSNR on them is reported per epoch.
        checkpoint: path of a resumable checkpoint, rewritten after every epoch; when it exists
            the run continues from it (same arguments required).
        progress: called as ``progress(epoch, step, steps_per_epoch, loss)`` after every step.

    Returns:
        One :class:`EpochStats` per epoch run by this call (none if the checkpoint was complete).
    """
    from ..torch_utils import resolve_device

    if objective not in OBJECTIVES:
        raise InvalidParameterError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    if objective == "stability" and not classifiers:
        raise InvalidParameterError("objective='stability' needs at least one surrogate classifier (classifiers=)")
    if isinstance(noise_sd, (tuple, list)):
        if len(noise_sd) != 2:
            raise InvalidParameterError(f"a noise_sd range must be (low, high), got {noise_sd!r}")
        sd_range = (check_noise_sd(noise_sd[0], allow_zero=True), check_noise_sd(noise_sd[1], allow_zero=False))
        if not sd_range[0] < sd_range[1]:
            raise InvalidParameterError(f"a noise_sd range needs low < high, got {noise_sd!r}")
        noise_sd = list(sd_range)
    else:
        noise_sd = check_noise_sd(noise_sd, allow_zero=False)
    if not (isinstance(mse_weight, (int, float)) and math.isfinite(mse_weight) and mse_weight >= 0):
        raise InvalidParameterError(f"mse_weight must be a finite number >= 0, got {mse_weight!r}")
    if int(epochs) < 1 or int(batch_size) < 1 or not lr > 0:
        raise InvalidParameterError(f"need epochs >= 1, batch_size >= 1, lr > 0; got {epochs}, {batch_size}, {lr}")
    if patch_size is None and not (isinstance(images, torch.Tensor) and images.ndim == 4):
        raise InvalidParameterError("images must be a [N, C, H, W] tensor, or pass patch_size= for a list of images")
    if patch_size is not None:
        if int(patch_size) < 1 or not len(images):
            raise InvalidParameterError(f"need patch_size >= 1 and at least one image, got {patch_size} and {len(images)}")
        small = [tuple(im.shape) for im in images if im.ndim != 3 or min(im.shape[-2:]) < int(patch_size)]
        if small:
            raise InvalidParameterError(
                f"patch mode needs [C, H, W] images at least {patch_size}×{patch_size}; got {small[:3]}; "
                "lower patch_size or drop the small images"
            )
    device = resolve_device(device)
    if clip_noisy:
        model.noisy_input = "clipped"  # saved with the weights, so RobustAPI feeds it clipped copies too
    model.to(device).train()
    for clf in classifiers:
        clf.to(device).eval().requires_grad_(False)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    num_items = int(patches_per_epoch or len(images)) if patch_size else int(images.shape[0])
    steps_per_epoch = math.ceil(num_items / batch_size)
    total_steps = steps_per_epoch * int(epochs)
    settings = {"objective": objective, "noise_sd": noise_sd, "epochs": int(epochs), "batch_size": int(batch_size),
                "lr": float(lr), "seed": int(seed), "patch_size": patch_size, "num_items": num_items}
    settings["clip_noisy"] = bool(clip_noisy)  # a checkpoint without it trained on clipped copies
    if mse_weight:  # only when used, so checkpoints from before the option still resume
        settings["mse_weight"] = float(mse_weight)
    first_epoch = 1
    path = Path(checkpoint) if checkpoint is not None else None
    if path is not None and path.is_file():
        meta = _load_checkpoint(path, model, optimizer, device, settings)
        first_epoch = int(meta["epochs_done"]) + 1
        logger.info("resuming from %s after epoch %d", path, first_epoch - 1)
    history: List[EpochStats] = []
    for epoch in range(first_epoch, int(epochs) + 1):
        began = time.perf_counter()
        rng, generator = _epoch_generators(seed, epoch, device)
        data, order = _epoch_batches(images, rng, patch_size, patches_per_epoch)
        total_loss = 0.0
        for step in range(steps_per_epoch):
            index = torch.as_tensor(order[step * batch_size : (step + 1) * batch_size])
            clean = _as_float(data[index]).to(device, non_blocking=True)
            if isinstance(noise_sd, list):
                sd = torch.rand(clean.shape[0], generator=generator, device=device) * (noise_sd[1] - noise_sd[0]) + noise_sd[0]
            else:
                sd = noise_sd
            noisy = add_noise(clean, sd, generator, clip=clip_noisy)
            for group in optimizer.param_groups:
                group["lr"] = _cosine_lr(lr, (epoch - 1) * steps_per_epoch + step, total_steps)
            denoised = denoise_with_sd(model, noisy, sd)
            if objective == "mse":
                loss = F.mse_loss(denoised, clean)
            else:
                losses = []
                for clf in classifiers:
                    with torch.no_grad():
                        target = clf(clean).argmax(1)
                    losses.append(F.cross_entropy(clf(denoised), target))
                loss = torch.stack(losses).mean()
                if mse_weight:
                    loss = loss + mse_weight * F.mse_loss(denoised, clean)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total_loss += float(loss.detach())
            if progress is not None:
                progress(epoch, step + 1, steps_per_epoch, float(loss.detach()))
        val_sd = noise_sd if not isinstance(noise_sd, list) else sum(noise_sd) / 2
        val = psnr(model, _as_float(val_images).to(device), val_sd, seed=seed, clip=clip_noisy) if val_images is not None else None
        stats = EpochStats(epoch, total_loss / steps_per_epoch, val, optimizer.param_groups[0]["lr"],
                           time.perf_counter() - began)
        history.append(stats)
        logger.info("epoch %d: %s", epoch, asdict(stats))
        if path is not None:
            _save_checkpoint(path, model, optimizer, {"settings": settings, "epochs_done": epoch,
                                                      "config": model.config(), "arch": model.arch})
    model.eval()
    return history
