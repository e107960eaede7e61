"""Denoisers for denoised smoothing: architectures, shipped weights, loading and training.

Every denoiser is a ``torch.nn.Module`` mapping a float batch [B, C, H, W] of noisy copies
x + σz (not clipped) to the same shape (see :class:`DenoiserModule`). ``available()`` lists the shipped weights,
``load_denoiser(name_or_path)`` loads shipped, saved or the denoised-smoothing paper's
checkpoints, ``train_denoiser`` trains with the MSE or the stability objective.
"""

__all__ = [
    "DenoiserModule",
    "DnCNN",
    "DRUNet",
    "FFDNet",
    "MemNet",
    "NonLocalMeans",
    "available",
    "load_denoiser",
    "save_denoiser",
    "denoiser_from_state_dict",
    "build_architecture",
    "architecture_names",
    "register_architecture",
    "train_denoiser",
    "add_noise",
    "psnr",
    "EpochStats",
    "OBJECTIVES",
    "DENOISER_FORMAT",
    "PAPER_ARCHITECTURES",
]


_HOMES = {
    "DenoiserModule": "base", "build_architecture": "registry", "architecture_names": "registry",
    "register_architecture": "registry", "DnCNN": "dncnn", "DRUNet": "drunet", "FFDNet": "ffdnet", "MemNet": "memnet",
    "NonLocalMeans": "classical", "available": "loading", "load_denoiser": "loading",
    "save_denoiser": "loading", "denoiser_from_state_dict": "registry", "DENOISER_FORMAT": "loading",
    "PAPER_ARCHITECTURES": "loading", "train_denoiser": "training", "add_noise": "training",
    "psnr": "training", "EpochStats": "training", "OBJECTIVES": "training",
}


def __getattr__(name):
    # Lazy: importing robust_api.denoisers (e.g. for the CLI's argument parser) does not import torch.
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    from ..optional import require_torch

    require_torch(f"robust_api.denoisers.{name}")
    return getattr(importlib.import_module(f"{__name__}.{home}"), name)


def __dir__():
    return sorted(__all__)
