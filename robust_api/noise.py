"""Seeded, counter-based Gaussian noise: sample i is a pure function of (seed, image, phase, i).

Design: the Philox counter-based generator is keyed by SHA-256(seed, image digest, phase),
and sample i reads a fixed block of counters [i·B, (i+1)·B). Uniforms become normals by the
Box–Muller transform, which consumes a fixed number of random words per normal, so a batch
[a, b) equals the concatenation of single samples a, …, b−1 whatever the batch boundaries,
the device, or how a run was interrupted and resumed. Arithmetic is float64, cast to float32
after clipping.
"""

from __future__ import annotations

import hashlib

import numpy as np

from .errors import InvalidParameterError

__all__ = ["PHASES", "noise_key", "NoiseSampler"]

#: The sampling phases a query can belong to.
#: clean: the unperturbed image (noise_sd = 0); selection: Cohen's n₀ samples that pick ĉ;
#: estimation: the n fresh samples that bound p_A; predict: PREDICT's n samples.
PHASES = ("clean", "selection", "estimation", "predict")

_TWO_PI = 2.0 * np.pi
_WORDS_PER_COUNTER = 4  # Philox4x64 yields four 64-bit words per counter value


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
    """Noisy copies clip(x + σ·z_i, 0, 1) of one image, z_i ~ N(0, I) reproducible per index.

    Args:
        image: float32 array [H, W, C] in [0, 1] (already validated).
        image_digest: hex digest identifying the image (part of the noise key).
        seed: integer in [0, 2⁶³).
        phase: one of :data:`PHASES`.
        noise_sd: σ ≥ 0 in [0, 1] pixel units; 0 returns exact copies of the image.
    """

    def __init__(self, image: np.ndarray, image_digest: str, seed: int, phase: str, noise_sd: float):
        if phase not in PHASES:
            raise InvalidParameterError(f"unknown phase {phase!r}; expected one of {PHASES}")
        self.image = image
        self.noise_sd = float(noise_sd)
        self._key = noise_key(seed, image_digest, phase)
        self._dim = int(image.size)
        words = self._dim + (self._dim % 2)  # Box–Muller makes normals in pairs
        self._counters_per_sample = -(-words // _WORDS_PER_COUNTER)
        self._words_per_sample = self._counters_per_sample * _WORDS_PER_COUNTER

    def standard_normal(self, start: int, stop: int) -> np.ndarray:
        """z_start, …, z_{stop−1}: float64 array [stop − start, H, W, C] of N(0, 1) draws."""
        count = stop - start
        if start < 0 or count < 0:
            raise InvalidParameterError(f"invalid sample range [{start}, {stop})")
        bit_generator = np.random.Philox(key=self._key, counter=start * self._counters_per_sample)
        words = bit_generator.random_raw(count * self._words_per_sample).reshape(count, self._words_per_sample)
        pairs = self._dim + (self._dim % 2)
        uniforms = ((words[:, :pairs] >> np.uint64(11)).astype(np.float64) + 1.0) * (2.0**-53)  # (0, 1]
        u1 = uniforms[:, 0::2]
        u2 = uniforms[:, 1::2]
        radius = np.sqrt(-2.0 * np.log(u1))
        normals = np.empty((count, pairs), dtype=np.float64)
        normals[:, 0::2] = radius * np.cos(_TWO_PI * u2)
        normals[:, 1::2] = radius * np.sin(_TWO_PI * u2)
        return normals[:, : self._dim].reshape((count,) + self.image.shape)

    def noisy(self, start: int, stop: int) -> np.ndarray:
        """Noisy copies for sample indices [start, stop): float32 [stop − start, H, W, C] in [0, 1]."""
        if self.noise_sd == 0.0:
            return np.broadcast_to(self.image, (stop - start,) + self.image.shape).astype(np.float32)
        noisy = self.image.astype(np.float64) + self.noise_sd * self.standard_normal(start, stop)
        np.clip(noisy, 0.0, 1.0, out=noisy)
        return noisy.astype(np.float32)
