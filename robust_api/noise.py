"""Seeded, counter-based Gaussian noise: sample i is a pure function of (seed, image, phase, i).

Design: the Philox counter-based generator is keyed by SHA-256(seed, image digest, phase),
and sample i reads a fixed block of counters [i·B, (i+1)·B). Uniforms become normals by the
Box–Muller transform, which consumes a fixed number of random words per normal, so a batch
[a, b) equals the concatenation of single samples a, …, b−1 whatever the batch boundaries,
the device, or how a run was interrupted and resumed.

Memory: the stream is produced in *slabs* of at most ``slab_values`` values. Small images
go several whole samples to a slab; a large image is cut into slabs of its flattened pixels,
each starting on a Philox counter boundary (4 words), so any slab can be generated on its own.
Arithmetic is float64 inside a slab only; the result is clipped (unless the caller asks for
the unclipped copy, which is what a denoiser gets) and written straight into a float32
output. The values are bit-identical to generating the whole batch at once in float64
(the formula of the first release; ``tests/engine/test_memory.py`` checks it on odd shapes and batch
boundaries): the float64 working memory is bounded by the slab, not by the image or the batch.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from .errors import DenoiserError, InvalidParameterError

__all__ = [
    "NOISE_SD_TOLERANCE", "SigmaMismatch", "sigma_mismatch",
    "NOISY_INPUTS", "noisy_input_of", "clips_noisy_copies", "as_fed",
    "PHASES", "noise_key", "NoiseSampler", "SLAB_BYTES_PER_VALUE", "DEFAULT_SLAB_BYTES",
]

#: What a denoiser is fed: "unclipped" x + σ·z (the default), or "clipped" clip(x + σ·z, 0, 1)
#: for weights trained on clipped copies.
NOISY_INPUTS = ("unclipped", "clipped")

#: Relative distance between the σ of a call and a denoiser's trained ``noise_sd`` above which
#: the runner warns (σ-conditioned denoisers: outside ``noise_sd_range`` instead).
NOISE_SD_TOLERANCE = 0.10


@dataclass(frozen=True)
class SigmaMismatch:
    """Why a denoiser does not suit a noise level (see :func:`sigma_mismatch`).

    Attributes:
        kind: "trained" (a denoiser for one σ, used at another), "fine_tuned" (a σ-conditioned
            one fine-tuned for one σ, used at another) or "range" (σ outside a σ-conditioned
            denoiser's trained range).
        text: the reason in words, e.g. "trained for noise_sd=0.25".
        trained: the σ it was trained or fine-tuned for, or its (low, high) range.
    """

    kind: str
    text: str
    trained: Any


def sigma_mismatch(denoiser: Any, noise_sd: float, tolerance: float = NOISE_SD_TOLERANCE) -> Optional[SigmaMismatch]:
    """Whether ``denoiser`` suits noise level σ = ``noise_sd``: None when it does (or says
    nothing about σ), else a :class:`SigmaMismatch`. The one rule the SDK's warning, the
    evaluation commands and the benchmarks apply.

    Reads ``noise_sd_range`` (a σ-conditioned denoiser: σ must lie in it, and within
    ``tolerance`` (relative) of its ``fine_tuned_noise_sd`` if it has one) or, for any other,
    ``noise_sd`` (σ within ``tolerance`` of it). A σ-conditioned denoiser's ``noise_sd`` is the
    σ it was last told, so it is not read.
    """
    noise_sd = float(noise_sd)
    trained_range = getattr(denoiser, "noise_sd_range", None)
    if trained_range is not None:
        low, high = trained_range
        if not low <= noise_sd <= high:
            return SigmaMismatch("range", f"trained for noise_sd in [{low:g}, {high:g}]", (low, high))
        tuned = getattr(denoiser, "fine_tuned_noise_sd", None)
        if tuned is not None and abs(noise_sd - tuned) > tolerance * tuned:
            return SigmaMismatch("fine_tuned", f"fine-tuned for noise_sd={tuned:g}", tuned)
        return None
    trained = getattr(denoiser, "noise_sd", None)
    if trained is not None and abs(noise_sd - trained) > tolerance * trained:
        return SigmaMismatch("trained", f"trained for noise_sd={trained:g}", trained)
    return None


def noisy_input_of(module: object) -> str:
    """The input ``module`` (a denoiser) expects, one of :data:`NOISY_INPUTS`: its ``noisy_input``
    attribute, "unclipped" when it has none. Raises :class:`DenoiserError` for another value."""
    value = getattr(module, "noisy_input", "unclipped")
    if value not in NOISY_INPUTS:
        raise DenoiserError(
            f"{type(module).__name__}.noisy_input must be one of {NOISY_INPUTS} (what the denoiser was trained on), "
            f"got {value!r}"
        )
    return value


def clips_noisy_copies(module: object) -> bool:
    """True when the noisy copies x + σz are clipped to [0, 1] before ``module`` sees them: for no
    denoiser (``module`` None; the classifier gets the clipped copy) and for a denoiser trained on
    clipped copies (``noisy_input == "clipped"``). Every other denoiser gets them unclipped."""
    return module is None or noisy_input_of(module) == "clipped"


def as_fed(module: object, noisy):
    """``noisy`` (a torch tensor or NumPy array of x + σz, any shape) as RobustAPI feeds it to
    ``module``: clipped to [0, 1] where :func:`clips_noisy_copies` says so, else unchanged."""
    if not clips_noisy_copies(module):
        return noisy
    return noisy.clamp(0.0, 1.0) if hasattr(noisy, "clamp") else np.clip(noisy, 0.0, 1.0)


#: The sampling phases a query can belong to.
#: clean: the unperturbed image (noise_sd = 0); selection: Cohen's n₀ samples that pick ĉ;
#: estimation: the n fresh samples that bound p_A; predict: PREDICT's n samples.
PHASES = ("clean", "selection", "estimation", "predict")

_TWO_PI = 2.0 * np.pi
_WORDS_PER_COUNTER = 4  # Philox4x64 yields four 64-bit words per counter value

#: Upper bound on the temporary bytes one generated value needs inside a slab (random word,
#: float64 uniform, Box–Muller radius/angle/cos/sin shares, float64 image and sum); measured
#: with tracemalloc in tests/engine/test_memory.py.
SLAB_BYTES_PER_VALUE = 48
#: Default float64 working memory of one slab.
DEFAULT_SLAB_BYTES = 32 << 20


def noise_key(seed: int, image_digest: str, phase: str) -> int:
    """128-bit Philox key for one (seed, image, phase) stream.

    Args:
        seed: the call's seed, an integer in [0, 2⁶³).
        image_digest: hex SHA-256 of the clean image (see ``robust_api.images``).
        phase: one of :data:`PHASES`.
    """
    material = f"robust_api.noise/1|{int(seed)}|{image_digest}|{phase}".encode()
    return int.from_bytes(hashlib.sha256(material).digest()[:16], "little")


class NoiseSampler:
    """Noisy copies x + σ·z_i of one image, z_i ~ N(0, I) reproducible per index, clipped
    to [0, 1] (what a classifier gets) or not (what a denoiser gets).

    Args:
        image: float32 array [H, W, C] in [0, 1] (already validated).
        image_digest: hex digest identifying the image (part of the noise key).
        seed: integer in [0, 2⁶³).
        phase: one of :data:`PHASES`.
        noise_sd: σ ≥ 0 in [0, 1] pixel units; 0 returns exact copies of the image.
        slab_bytes: the most float64 working memory one slab of the stream may use
            (default :data:`DEFAULT_SLAB_BYTES`); it sets how many values are generated at
            once (``slab_values``, a multiple of 4, at least 4) and never changes the values.
    """

    def __init__(self, image: np.ndarray, image_digest: str, seed: int, phase: str, noise_sd: float,
                 slab_bytes: Optional[int] = None):
        if phase not in PHASES:
            raise InvalidParameterError(f"unknown phase {phase!r}; expected one of {PHASES}")
        self.image = image
        self.noise_sd = float(noise_sd)
        self._key = noise_key(seed, image_digest, phase)
        self._dim = int(image.size)
        words = self._dim + (self._dim % 2)  # Box–Muller makes normals in pairs
        self._counters_per_sample = -(-words // _WORDS_PER_COUNTER)
        self._words_per_sample = self._counters_per_sample * _WORDS_PER_COUNTER
        budget = DEFAULT_SLAB_BYTES if slab_bytes is None else int(slab_bytes)
        values = budget // SLAB_BYTES_PER_VALUE
        self.slab_values = max(_WORDS_PER_COUNTER, values - values % _WORDS_PER_COUNTER)
        self._image64: Optional[np.ndarray] = None  # the image in float64, kept only when small

    # -- the stream ------------------------------------------------------------------------
    def _samples_per_slab(self) -> int:
        """Whole samples generated together (0: a sample is cut into several slabs)."""
        return self.slab_values // self._words_per_sample

    def _whole_samples(self, start: int, stop: int) -> np.ndarray:
        """float64 normals [stop − start, dim] for whole samples (the original formula)."""
        count = stop - start
        bit_generator = np.random.Philox(key=self._key, counter=start * self._counters_per_sample)
        words = bit_generator.random_raw(count * self._words_per_sample).reshape(count, self._words_per_sample)
        pairs = self._dim + (self._dim % 2)
        uniforms = ((words[:, :pairs] >> np.uint64(11)).astype(np.float64) + 1.0) * (2.0**-53)  # (0, 1]
        del words
        u1 = uniforms[:, 0::2]
        u2 = uniforms[:, 1::2]
        radius = np.sqrt(-2.0 * np.log(u1))
        normals = np.empty((count, pairs), dtype=np.float64)
        normals[:, 0::2] = radius * np.cos(_TWO_PI * u2)
        normals[:, 1::2] = radius * np.sin(_TWO_PI * u2)
        return normals[:, : self._dim]

    def _slab(self, index: int, low: int, high: int) -> np.ndarray:
        """float64 normals of flattened positions [low, high) of sample ``index``.

        ``low`` is a multiple of 4 (a counter boundary); the values equal those of
        :meth:`_whole_samples` at the same positions (same words, same operations).
        """
        words_needed = (high - low) + ((high - low) % 2)
        bit_generator = np.random.Philox(
            key=self._key, counter=index * self._counters_per_sample + low // _WORDS_PER_COUNTER
        )
        words = bit_generator.random_raw(words_needed)
        words >>= np.uint64(11)
        uniforms = words.astype(np.float64)
        del words
        uniforms += 1.0
        uniforms *= 2.0**-53  # (0, 1]
        radius = np.log(uniforms[0::2])
        radius *= -2.0
        np.sqrt(radius, out=radius)
        angle = _TWO_PI * uniforms[1::2]
        # the uniforms are used up: their buffer takes the normals
        np.multiply(radius, np.cos(angle), out=uniforms[0::2])
        np.sin(angle, out=angle)
        np.multiply(radius, angle, out=uniforms[1::2])
        return uniforms[: high - low]

    def _float64_runs(self, start: int, stop: int) -> Iterator[tuple[int, int, int, np.ndarray]]:
        """(first sample, sample count, first position, float64 normals [count, width]) in slabs."""
        group = self._samples_per_slab()
        if group >= 1:
            for first in range(start, stop, group):
                last = min(stop, first + group)
                yield first, last - first, 0, self._whole_samples(first, last)
            return
        for index in range(start, stop):
            for low in range(0, self._dim, self.slab_values):
                high = min(self._dim, low + self.slab_values)
                yield index, 1, low, self._slab(index, low, high)[None, :]

    def standard_normal(self, start: int, stop: int) -> np.ndarray:
        """z_start, …, z_{stop−1}: float64 array [stop − start, H, W, C] of N(0, 1) draws.

        Materialises float64 values (8 bytes each): meant for tests and small images; the
        query path uses :meth:`noisy`, whose float64 memory is bounded by one slab.
        """
        self._check_range(start, stop)
        out = np.empty((stop - start, self._dim), dtype=np.float64)
        for first, count, low, normals in self._float64_runs(start, stop):
            out[first - start : first - start + count, low : low + normals.shape[1]] = normals
        return out.reshape((stop - start,) + self.image.shape)

    def noisy(self, start: int, stop: int, out: Optional[np.ndarray] = None, clip: bool = True) -> np.ndarray:
        """Noisy copies for sample indices [start, stop): float32 [stop − start, H, W, C].

        Each value is float32(clip(float64(x) + σ·z, 0, 1)) with ``clip`` (in [0, 1]), else
        float32(float64(x) + σ·z) (any real value: the input a denoiser gets), computed in
        float64 one slab at a time. The noise z is the same either way, and clipping the
        unclipped copy gives the clipped one bit for bit (float32 rounding is monotone and
        0 and 1 are exact). Args: ``out``, an optional C-contiguous float32 array of that
        shape to write into; ``clip``, whether to clip to [0, 1] (default True).
        """
        self._check_range(start, stop)
        shape = (stop - start,) + self.image.shape
        if out is None:
            out = np.empty(shape, dtype=np.float32)
        elif out.shape != shape or out.dtype != np.float32 or not out.flags.c_contiguous:
            raise InvalidParameterError(f"out must be a C-contiguous float32 array of shape {shape}")
        if self.noise_sd == 0.0:
            out[...] = self.image
            return out
        flat_out = out.reshape(stop - start, self._dim)
        flat_image = self.image.reshape(-1)
        for first, count, low, normals in self._float64_runs(start, stop):
            high = low + normals.shape[1]
            if count > 1 or high - low == self._dim:
                if self._image64 is None:
                    self._image64 = flat_image.astype(np.float64)
                image64 = self._image64
            else:
                image64 = flat_image[low:high].astype(np.float64)
            # x + σ·z in the order of the first release: σ·z first, then the image added
            normals *= self.noise_sd
            normals += image64
            if clip:
                np.clip(normals, 0.0, 1.0, out=normals)
            flat_out[first - start : first - start + count, low:high] = normals
        return out

    @staticmethod
    def _check_range(start: int, stop: int) -> None:
        if start < 0 or stop < start:
            raise InvalidParameterError(f"invalid sample range [{start}, {stop})")
