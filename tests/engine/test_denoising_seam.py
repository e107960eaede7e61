"""The denoiser seam (engine.denoising) and the one σ rule (noise.sigma_mismatch), torch-free."""

from types import SimpleNamespace

import numpy as np
import pytest

from robust_api.engine.denoising import CallableDenoiser, Denoising, make_denoiser
from robust_api.errors import DenoiserError, InvalidParameterError
from robust_api.noise import sigma_mismatch
from robust_api.query_logs.records import PREPROCESSING_CLIPPED, PREPROCESSING_UNCLIPPED


def test_sigma_mismatch_one_rule_for_every_kind_of_denoiser():
    fixed = SimpleNamespace(noise_sd=0.25)
    assert sigma_mismatch(fixed, 0.25) is None and sigma_mismatch(fixed, 0.27) is None  # within 10 %
    off = sigma_mismatch(fixed, 0.12)
    assert (off.kind, off.trained, off.text) == ("trained", 0.25, "trained for noise_sd=0.25")
    ranged = SimpleNamespace(noise_sd=0.3, noise_sd_range=(0.0, 0.55))  # noise_sd: the σ it was last told
    assert sigma_mismatch(ranged, 0.12) is None and sigma_mismatch(ranged, 0.5) is None
    outside = sigma_mismatch(ranged, 0.8)
    assert outside.kind == "range" and outside.trained == (0.0, 0.55)
    tuned = SimpleNamespace(noise_sd=0.25, noise_sd_range=(0.0, 0.55), fine_tuned_noise_sd=0.25)
    assert sigma_mismatch(tuned, 0.25) is None
    assert sigma_mismatch(tuned, 0.12).kind == "fine_tuned"
    assert sigma_mismatch(SimpleNamespace(), 0.5) is None  # says nothing about σ
    assert sigma_mismatch(None, 0.5) is None


def test_a_callable_denoiser_through_the_seam():
    calls = []

    def halve(images):
        calls.append(images.copy())
        return images * 0.5

    seam = Denoising(make_denoiser(halve, device=None), memory_limit=64 * 2**20)
    assert isinstance(seam.runner, CallableDenoiser) and seam.present
    assert seam.identity.endswith("halve") and seam.digest is None
    assert not seam.clips_noisy_copies and seam.preprocessing == PREPROCESSING_UNCLIPPED
    assert seam.copies_in_memory == 3 and seam.noise_budget == 64 * 2**20
    out = seam(np.full((2, 3, 3, 1), 3.0, np.float32), 0.25)
    assert out.max() == 1.0 and calls[0].max() == 3.0  # unclipped in, clipped out


def test_no_denoiser_and_bad_denoisers():
    none = Denoising(None, memory_limit=2**20)
    assert not none.present and none.clips_noisy_copies and none.preprocessing == PREPROCESSING_CLIPPED
    assert none.copies_in_memory == 0 and none.identity is None
    with pytest.raises(InvalidParameterError, match="denoiser must be"):
        make_denoiser(3, device=None)
    broken = Denoising(make_denoiser(lambda images: images[:1], device=None), memory_limit=2**20)
    with pytest.raises(DenoiserError, match="returned shape"):
        broken(np.zeros((2, 3, 3, 1), np.float32), 0.25)
    failing = Denoising(make_denoiser(lambda images: 1 / 0, device=None), memory_limit=2**20)
    with pytest.raises(DenoiserError, match="ZeroDivisionError"):
        failing(np.zeros((1, 3, 3, 1), np.float32), 0.25)
