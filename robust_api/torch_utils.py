"""Small PyTorch helpers shared by the local provider and denoisers (torch imported lazily)."""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import queue
import threading
import warnings
from typing import Any, Optional

import numpy as np

from .errors import DenoiserError, DenoiserNoiseLevelWarning, InvalidParameterError
from .noise import noisy_input_of, sigma_mismatch
from .optional import require_torch

__all__ = [
    "resolve_device",
    "read_safetensors",
    "state_dict_digest",
    "ModuleDenoiser",
    "denoiser_chunk_size",
    "receptive_radius",
    "activation_bytes_per_pixel",
    "usable_cpus",
    "CpuWorkers",
    "cpu_workers",
    "batch_chunks",
]


def resolve_device(device: Any = None):
    """A ``torch.device``: the one given, else CUDA when available, else CPU."""
    torch = require_torch(f"device={device!r}" if device is not None else "a PyTorch model or denoiser")

    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise InvalidParameterError(f"invalid device {device!r}: {exc}") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise InvalidParameterError(f"device {device!r} requested but CUDA is not available; use device='cpu'")
    return resolved


def read_safetensors(path, expected_format: str, error: type, hint: str):
    """(metadata dict, CPU state dict) of a robust_api safetensors file whose ``format`` metadata
    is ``expected_format``; anything else raises ``error`` with the file name and ``hint``."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    name = os.fspath(path)
    try:
        with safe_open(name, framework="pt") as handle:
            metadata = handle.metadata() or {}
        state = load_file(name, device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise error(f"{name!r} is not a readable safetensors file ({exc})") from None
    if metadata.get("format") != expected_format:
        raise error(f"{name!r} has no {expected_format} metadata (format={metadata.get('format')!r}); {hint}")
    return metadata, state


def state_dict_digest(module) -> str:
    """Hex SHA-256 over a module's state_dict (names, dtypes, shapes and values, sorted by name)."""
    import torch

    hasher = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        flat = tensor.detach().to("cpu").contiguous().view(-1)
        hasher.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        if flat.numel():
            hasher.update(flat.view(torch.uint8).numpy().tobytes())
    return hasher.hexdigest()


def nhwc_to_tensor(images: np.ndarray, device):
    """float32 NumPy [B, H, W, C] -> torch float32 [B, C, H, W] on ``device``."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).to(device)


class ModuleDenoiser:
    """Run a ``torch.nn.Module`` denoiser ([B, C, H, W] noisy → same, see
    :mod:`robust_api.denoisers.base`) on NumPy NHWC batches.

    Batches are cut into chunks whose activations fit the device's activation budget (see
    :func:`denoiser_chunk_size`). An image too large for the budget on its own is denoised in
    spatial tiles, each extended on every side by the module's receptive radius (the pixels
    an output pixel depends on), so that every output pixel sees exactly the input it sees
    untiled: the result equals the untiled one up to float rounding (the convolution kernels
    may accumulate in another order on another tile size). A module whose receptive radius
    is unknown is not tiled: it raises :class:`DenoiserError` saying what to do. On CUDA the
    module runs in channels_last memory format under autocast (bfloat16 where the GPU
    supports it, else float16); on CPU in float32, and a module that declares
    ``parallel_forward = True`` (every :class:`~robust_api.denoisers.base.DenoiserModule`)
    is run on the process's :class:`CpuWorkers`, one chunk of at most
    :data:`CPU_CHUNK_IMAGES` images per worker at a time, with the same results.

    Args:
        module: the denoiser; put in eval mode and moved to ``device``.
        device: None (CUDA when available, else CPU), or anything ``torch.device`` takes.
        mixed_precision: None = autocast on CUDA only; False = always float32.
        activation_bytes: bytes the activations of one forward pass may take on the CPU
            (default :data:`CPU_ACTIVATION_BYTES`); on CUDA half the free GPU memory.

    Attributes:
        identity: ``"denoiser:<shipped name>"`` or ``"module:<class path>"``.
        digest: hex SHA-256 of the weights, the module's ``config()`` if it has one, and the
            autocast precision if any; recorded in the query log with every call, so logged
            answers are reused only for the same denoiser run the same way.
        noise_sd: the σ the module says it was trained for (at load time), or None.
        noise_sd_range: (lo, hi) for a σ-conditioned module, else None.
        noisy_input: "unclipped" (the module gets x + σ·z) or "clipped" (it was trained on
            clip(x + σ·z, 0, 1), so it gets that); see :data:`robust_api.denoisers.base.NOISY_INPUTS`.
        image_channels: the channel count the module accepts, or None (any / unknown).
        receptive_radius: see :func:`receptive_radius` (None: the module cannot be tiled),
            rounded up to a multiple of the module's ``tile_multiple`` (default 1; FFDNet's 2:
            tiles then start on its 2×2 pixel-unshuffle grid and match the untiled result).
        tiles_run: forward passes run on tiles so far (a counter, for tests and benchmarks).
        parallel: True when CPU batches are split over :func:`cpu_workers`: a CPU device and a
            module whose ``parallel_forward`` is True (its ``forward`` writes no state, and
            gives each image the same bits in any batch and on any number of threads).
    """

    def __init__(self, module, device: Any = None, mixed_precision: Optional[bool] = None,
                 activation_bytes: Optional[int] = None):
        import torch

        self.device = resolve_device(device)
        self.module = module.to(self.device).eval()
        name = (getattr(module, "metadata", None) or {}).get("name")
        self.identity = f"denoiser:{name}" if name else f"module:{type(module).__module__}.{type(module).__qualname__}"
        self.noise_sd = getattr(module, "noise_sd", None)
        self.noise_sd_range = _checked_noise_sd_range(module)
        self.fine_tuned_noise_sd = getattr(module, "fine_tuned_noise_sd", None) if self.noise_sd_range else None
        self.noisy_input = noisy_input_of(module)
        self._warned_noise_sds: set = set()
        self._warn_lock = threading.Lock()
        self.image_channels = getattr(module, "image_channels", None)
        self.activation_bytes = activation_bytes
        # a module that regroups pixels (FFDNet's 2×2 pixel unshuffle) declares tile_multiple:
        # tiles then start and extend on that grid, so they see the pixels grouped as untiled
        self.tile_multiple = int(getattr(module, "tile_multiple", 1) or 1)
        radius = receptive_radius(module)
        self.receptive_radius = None if radius is None else -(-radius // self.tile_multiple) * self.tile_multiple
        self.tiles_run = 0
        self.parallel = self.device.type == "cpu" and getattr(module, "parallel_forward", False) is True
        self.autocast_dtype = None
        if self.device.type == "cuda":
            self.module = self.module.to(memory_format=torch.channels_last)
            if mixed_precision is not False:
                self.autocast_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        # Reduced precision is a (slightly) different base classifier: a call logged in float32
        # must not be resumed with bfloat16 votes, so the precision is part of the digest.
        config = module.config() if callable(getattr(module, "config", None)) else None
        parts = [state_dict_digest(module), json.dumps(config, sort_keys=True), str(self.autocast_dtype)]
        self.digest = hashlib.sha256("|".join(parts).encode()).hexdigest()
        self._torch = torch

    def set_noise_sd(self, noise_sd: float) -> None:
        """Pass the call's σ (> 0) to the module's ``set_noise_sd`` when it has one (a
        σ-conditioned denoiser); RobustAPI calls it before each denoising pass."""
        set_noise_sd = getattr(self.module, "set_noise_sd", None)
        if callable(set_noise_sd):
            set_noise_sd(float(noise_sd))

    def warn_if_untrained(self, noise_sd: float) -> bool:
        """Warn (:class:`DenoiserNoiseLevelWarning`, once per σ for this runner) when the module
        is used at a σ it was not trained for: outside ``noise_sd_range`` for a σ-conditioned
        module (or more than ``NOISE_SD_TOLERANCE`` from the σ it was fine-tuned for, if any),
        else more than ``NOISE_SD_TOLERANCE`` (relative) from its ``noise_sd``. Nothing when
        neither is known. Returns True when it warned now."""
        noise_sd = float(noise_sd)
        mismatch = sigma_mismatch(self, noise_sd)
        if mismatch is None:
            return False
        trained = mismatch.text
        with self._warn_lock:
            if noise_sd in self._warned_noise_sds:
                return False
            self._warned_noise_sds.add(noise_sd)
        warnings.warn(
            f"denoiser {self.identity} was {trained} but is used at noise_sd={noise_sd:g}; the certificate stays "
            "valid but is likely weaker than with a denoiser trained for this σ (robust_api.denoisers.available())",
            DenoiserNoiseLevelWarning, stacklevel=2,
        )
        return True

    def _budget(self) -> int:
        if self.device.type == "cuda":
            free, _ = self._torch.cuda.mem_get_info(self.device)
            return int(free * CUDA_FREE_MEMORY_SHARE)
        return int(CPU_ACTIVATION_BYTES if self.activation_bytes is None else self.activation_bytes)

    def _forward(self, batch: np.ndarray) -> "Any":
        """The module on float32 NHWC ``batch``; returns a float32 NHWC CPU tensor in [0, 1]."""
        torch = self._torch
        tensor = nhwc_to_tensor(batch, self.device)
        if self.autocast_dtype is not None:
            tensor = tensor.contiguous(memory_format=torch.channels_last)
            with torch.autocast("cuda", dtype=self.autocast_dtype):
                result = self.module(tensor)
        else:
            result = self.module(tensor)
        if tuple(result.shape) != tuple(tensor.shape):
            raise DenoiserError(
                f"denoiser {self.identity} returned shape {tuple(result.shape)} for input {tuple(tensor.shape)}"
            )
        return result.float().clamp_(0.0, 1.0).permute(0, 2, 3, 1).to("cpu")

    def __call__(self, images: np.ndarray, out: Optional[np.ndarray] = None) -> np.ndarray:
        """Denoise float32 [B, H, W, C] noisy copies (unclipped: any finite values; clipped ones
        for a ``noisy_input == "clipped"`` module, which the caller provides); returns float32
        [B, H, W, C] clamped to [0, 1].

        Args:
            out: optional float32 array of the same shape to write into (default: a new one).
        """
        torch = self._torch
        if out is None:
            out = np.empty(images.shape, dtype=np.float32)
        budget = self._budget()
        count, height, width = images.shape[0], images.shape[1], images.shape[2]
        per_pixel = activation_bytes_per_pixel(self.module)
        with torch.inference_mode():
            if height * width * per_pixel <= budget:
                if self._run_on_workers(images, out, height * width * per_pixel, budget):
                    return out
                chunk = max(1, budget // max(1, height * width * per_pixel))
                for start in range(0, count, chunk):
                    out[start : start + chunk] = self._forward(images[start : start + chunk]).numpy()
                return out
            self._tiled(images, out, budget, per_pixel)
        return out

    def _run_on_workers(self, images: np.ndarray, out: np.ndarray, image_bytes: int, budget: int) -> bool:
        """Denoise ``images`` into ``out`` on the :class:`CpuWorkers` when that applies (see
        :attr:`parallel`); False when it does not (one image, one usable CPU thread, or chunks
        for every worker at once would not fit ``budget``): the caller runs the module itself.

        The batch is cut into a multiple of the worker count of chunks of at most
        :data:`CPU_CHUNK_IMAGES` images, equal up to one image (20 images on 2 workers: 2 × 10;
        100: 4 × 25), so the workers finish together, and none of a single image (see
        :func:`batch_chunks`); the activations in flight stay within ``budget``."""
        count = images.shape[0]
        if not self.parallel or count < 2:
            return False
        workers = cpu_workers()
        if workers is None:
            return False
        per_chunk = min(CPU_CHUNK_IMAGES, budget // max(1, image_bytes * workers.count))
        if per_chunk < 1:
            return False
        chunks = workers.count * -(-count // (workers.count * per_chunk))

        def denoise(span: tuple) -> None:
            start, stop = span
            out[start:stop] = self._forward(images[start:stop]).numpy()

        workers.map(denoise, batch_chunks(count, chunks))
        return True

    def tile_size(self, image_shape, budget: Optional[int] = None) -> int:
        """The interior side of the square tiles for images of ``image_shape`` (H, W, C)
        (0: untiled). Raises DenoiserError when tiling is impossible under the budget."""
        budget = self._budget() if budget is None else int(budget)
        per_pixel = activation_bytes_per_pixel(self.module)
        height, width = int(image_shape[0]), int(image_shape[1])
        if height * width * per_pixel <= budget:
            return 0
        need_mb = height * width * per_pixel / 2**20
        radius = self.receptive_radius
        if radius is None:
            raise DenoiserError(
                f"denoiser {self.identity} needs about {need_mb:,.0f} MB of activations for one {height}×{width} "
                f"image but its budget is {budget / 2**20:,.0f} MB, and its receptive radius is unknown, so it "
                "cannot be run in tiles. Raise memory_limit_mb= (a quarter of it goes to the denoiser on the CPU), "
                "pass downscale=True with a smaller max_pixels=, or set module.receptive_radius = <pixels an "
                "output pixel depends on, on each side> if you know it"
            )
        side = math.isqrt(max(0, budget // per_pixel))
        interior = side - 2 * radius
        interior -= interior % self.tile_multiple
        if interior < max(8, radius):
            raise DenoiserError(
                f"denoiser {self.identity}: a tile of {side}×{side} pixels fits the activation budget of "
                f"{budget / 2**20:,.1f} MB, too small for its receptive radius of {radius} pixels; raise memory_limit_mb="
            )
        return interior

    def _tiled(self, images: np.ndarray, out: np.ndarray, budget: int, per_pixel: int) -> None:
        count, height, width = images.shape[0], images.shape[1], images.shape[2]
        interior = self.tile_size(images.shape[1:], budget)
        radius = self.receptive_radius
        for top in range(0, height, interior):
            bottom = min(height, top + interior)
            ext_top, ext_bottom = max(0, top - radius), min(height, bottom + radius)
            for left in range(0, width, interior):
                right = min(width, left + interior)
                ext_left, ext_right = max(0, left - radius), min(width, right + radius)
                tile_pixels = (ext_bottom - ext_top) * (ext_right - ext_left)
                chunk = max(1, budget // max(1, tile_pixels * per_pixel))
                for start in range(0, count, chunk):
                    stop = min(count, start + chunk)
                    result = self._forward(images[start:stop, ext_top:ext_bottom, ext_left:ext_right])
                    self.tiles_run += 1
                    out[start:stop, top:bottom, left:right] = result[
                        :, top - ext_top : bottom - ext_top, left - ext_left : right - ext_left
                    ].numpy()


def _checked_noise_sd_range(module) -> Optional[tuple]:
    """``module.noise_sd_range`` as a (lo, hi) tuple of floats with 0 ≤ lo < hi ≤ 1, or None."""
    declared = getattr(module, "noise_sd_range", None)
    if declared is None:
        return None
    try:
        low, high = (float(v) for v in declared)
    except (TypeError, ValueError):
        low = high = math.nan
    if not 0.0 <= low < high <= 1.0:
        raise DenoiserError(
            f"{type(module).__name__}.noise_sd_range must be None or (lo, hi) with 0 <= lo < hi <= 1 "
            f"(the σ the weights were trained on), got {declared!r}"
        )
    return (low, high)


def receptive_radius(module) -> Optional[int]:
    """Pixels, on each side, that one output pixel of a denoiser depends on; None if unknown.

    ``module.receptive_radius`` when the module declares it (an int ≥ 0). Otherwise, for the
    shipped stride-1 convolutional architectures (DnCNN, MemNet: convolutions with "same"
    zero padding, pointwise layers, residual sums and channel concatenations only), the
    sum of the convolutions' radii, an upper bound on any path's. None for everything else
    (DRUNet's down/up-sampling and padding to multiples of 8, non-local means, user modules).
    """
    declared = getattr(module, "receptive_radius", None)
    if declared is not None:
        if isinstance(declared, bool) or not isinstance(declared, int) or declared < 0:
            raise DenoiserError(f"receptive_radius must be a non-negative int (pixels), got {declared!r}")
        return declared
    try:
        from torch import nn

        from .denoisers.dncnn import DnCNN
        from .denoisers.memnet import MemNet
    except ImportError:  # pragma: no cover - torch is a dependency
        return None
    if type(module) not in (DnCNN, MemNet):
        return None
    radius = 0
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d):
            kernel, dilation, stride, padding = layer.kernel_size, layer.dilation, layer.stride, layer.padding
            reach = [d * (k - 1) // 2 for k, d in zip(kernel, dilation)]
            if any(s != 1 for s in stride) or any(k % 2 == 0 for k in kernel) or list(padding) != reach:
                return None
            radius += max(reach)
        elif isinstance(layer, (nn.MaxPool2d, nn.AvgPool2d, nn.Upsample, nn.ConvTranspose2d, nn.AdaptiveAvgPool2d)):
            return None
    return radius


#: Activation bytes per pixel and feature channel: float32, about four feature maps alive at
#: once (measured with tracemalloc/RSS on DnCNN-17/64 in benchmarks/memory.py).
BYTES_PER_ACTIVATION_CHANNEL = 16


def activation_bytes_per_pixel(module) -> int:
    """Activation bytes per image pixel of ``module``'s forward pass: its
    ``activation_channels`` (default 64) × :data:`BYTES_PER_ACTIVATION_CHANNEL`."""
    return int(getattr(module, "activation_channels", 64)) * BYTES_PER_ACTIVATION_CHANNEL


#: Memory a denoiser chunk may use for activations: a share of free CUDA memory, or this on CPU.
CPU_ACTIVATION_BYTES = 1 << 30
CUDA_FREE_MEMORY_SHARE = 0.5

#: Most images one CPU worker denoises per forward pass. Small chunks keep a layer's
#: activations in the core's cache, and the allocator reuses their memory from one layer to
#: the next, where a block of hundreds of images takes fresh pages (page faults) every layer.
CPU_CHUNK_IMAGES = 32


def batch_chunks(count: int, chunks: int) -> list:
    """[start, stop) ranges that cut a batch of ``count`` images into at most ``chunks``
    chunks whose sizes differ by at most one, none of a single image (unless ``count`` is 1):
    oneDNN runs a batch of one with other kernels, whose last bits differ from the same image
    in a larger batch; every other batch size gives the same bits."""
    chunks = max(1, min(int(chunks), count // 2))
    base, extra = divmod(count, chunks)
    ranges, start = [], 0
    for index in range(chunks):
        stop = start + base + (1 if index < extra else 0)
        ranges.append((start, stop))
        start = stop
    return ranges


@functools.lru_cache(maxsize=1)
def _cgroup_cpu_limit() -> Optional[int]:
    """The CPU quota of this process's Linux cgroup, rounded up (a container started with
    ``--cpus=2`` on a larger host: 2); None when there is none or it cannot be read. Read once."""
    candidates = (("/sys/fs/cgroup/cpu.max", None),  # cgroup v2: "<quota> <period>" or "max <period>"
                  ("/sys/fs/cgroup/cpu/cpu.cfs_quota_us", "/sys/fs/cgroup/cpu/cpu.cfs_period_us"))  # v1
    for quota_file, period_file in candidates:
        try:
            with open(quota_file, encoding="ascii") as handle:
                fields = handle.read().split()
            if period_file is not None:
                with open(period_file, encoding="ascii") as handle:
                    fields = fields[:1] + handle.read().split()[:1]
            quota, period = int(fields[0]), int(fields[1])
        except (OSError, ValueError, IndexError):  # "max", no such file, not Linux
            continue
        if quota > 0 and period > 0:
            return max(1, -(-quota // period))
    return None


def usable_cpus() -> int:
    """The CPU threads this process should use for PyTorch work: torch's intra-op thread count
    in the calling thread (``OMP_NUM_THREADS``, ``torch.set_num_threads``, else torch's
    default), capped by the cgroup CPU quota when there is one (torch does not read it)."""
    import torch

    count = max(1, int(torch.get_num_threads()))
    limit = _cgroup_cpu_limit()
    return count if limit is None else min(count, limit)


class CpuWorkers:
    """Daemon threads that each run PyTorch with one intra-op thread: data-parallel forward
    passes on the CPU, each worker on its own chunk of images.

    Why not torch's own threads: torch splits every layer across an OpenMP team, which meets
    at a barrier after each operation. When the cores are shared (other processes, or other
    threads of this one), a team member that loses its core stalls the team at every barrier
    while the others spin. Independent chunks never wait for each other. On 2 cores, the
    README's main job (3,630 denoised queries) took 15–28 s with a 2-thread team while
    another process kept one core busy, 10–16 s on two such workers; 25 s against 13–16 s
    with both cores busy; and on idle cores 7–12 s against 6–9 s (smaller chunks also stay
    in cache and reuse their memory: a tenth of the page faults).

    Only modules whose outputs do not depend on the batch size or the thread count are cut
    into chunks (``parallel_forward``: DnCNN, DRUNet, FFDNet, PhotoNet and non-local means,
    checked in ``tests/denoisers/test_cpu_workers.py``), so the chunks give the same bits as
    one pass with torch's threads.

    ``torch.set_num_threads(1)`` in a worker also sets torch's default for threads that have
    not used torch yet; the constructor restores that default once every worker has taken its
    own count, so the caller's threads keep theirs.

    Args:
        count: the number of worker threads, ≥ 1.
    """

    def __init__(self, count: int):
        import torch

        self.count = int(count)
        self._tasks: "queue.SimpleQueue" = queue.SimpleQueue()
        before = torch.get_num_threads()
        ready = threading.Barrier(self.count + 1)
        for index in range(self.count):
            threading.Thread(target=self._work, args=(ready,), name=f"robust-api-torch-{index}", daemon=True).start()
        ready.wait()
        torch.set_num_threads(before)  # torch's default for new threads, which the workers changed

    def _work(self, ready: threading.Barrier) -> None:
        import torch

        _in_worker.active = True
        torch.set_num_threads(1)
        torch.get_num_threads()  # this thread's count is now settled, whatever the default becomes
        ready.wait()
        while True:
            task = self._tasks.get()
            if task is None:
                return
            task()

    def map(self, fn, items) -> list:
        """``[fn(item) for item in items]``, the items spread over the workers (under
        ``torch.inference_mode``, which is per thread); waits for all of them and raises the
        first item's exception, if any, once every item is done. Called from a worker (a
        module that itself uses the workers), it runs the items there, one after the other."""
        import torch

        items = list(items)
        if getattr(_in_worker, "active", False):  # waiting for the other workers could deadlock
            with torch.inference_mode():
                return [fn(item) for item in items]
        results: list = [None] * len(items)
        errors: list = [None] * len(items)
        done = threading.Semaphore(0)

        def task(index: int, item) -> None:
            try:
                with torch.inference_mode():
                    results[index] = fn(item)
            except BaseException as exc:  # handed to the caller below
                errors[index] = exc
            finally:
                done.release()

        for index, item in enumerate(items):
            self._tasks.put(lambda index=index, item=item: task(index, item))
        for _ in items:
            done.acquire()
        for error in errors:
            if error is not None:
                raise error
        return results

    def stop(self) -> None:
        """Let the workers end once the queued tasks are done."""
        for _ in range(self.count):
            self._tasks.put(None)


_in_worker = threading.local()
_cpu_workers: dict = {}  # worker count -> CpuWorkers
_cpu_workers_lock = threading.Lock()


def _forget_workers_after_fork() -> None:
    """A forked child has none of its parent's threads: it starts its own workers if it needs any."""
    global _cpu_workers, _cpu_workers_lock
    _cpu_workers, _cpu_workers_lock = {}, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_workers_after_fork)


def cpu_workers() -> Optional[CpuWorkers]:
    """The process's :class:`CpuWorkers` for :func:`usable_cpus` in the calling thread
    (created on first use, kept for the life of the process); None when only one CPU thread
    is usable: the caller then runs torch itself."""
    count = usable_cpus()
    if count < 2:
        return None
    with _cpu_workers_lock:
        workers = _cpu_workers.get(count)
        if workers is None:
            workers = _cpu_workers[count] = CpuWorkers(count)
        return workers


def denoiser_chunk_size(module, image_shape, device, budget: Optional[int] = None) -> int:
    """Images per denoiser forward pass: activations of the widest layer, times 4 live copies,
    in float32, must fit ``budget`` (default: ``CPU_ACTIVATION_BYTES`` on the CPU, half the
    free CUDA memory on a GPU).

    Args:
        module: the denoiser; its ``activation_channels`` attribute (default 64) is the width.
        image_shape: (H, W, C) of one image.
        device: the ``torch.device`` it runs on.
        budget: activation bytes allowed (None: the device default above).

    Returns:
        An int ≥ 1 (1 also when one image alone exceeds the budget: :class:`ModuleDenoiser`
        then tiles it).
    """
    import torch

    height, width = int(image_shape[0]), int(image_shape[1])
    per_image = height * width * activation_bytes_per_pixel(module)
    if budget is None:
        if device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(device)
            budget = int(free * CUDA_FREE_MEMORY_SHARE)
        else:
            budget = CPU_ACTIVATION_BYTES
    return max(1, int(budget) // max(per_image, 1))
