"""Bounded memory (issue 15, break 5): float32 noise in slabs, blocks and requests that follow
``memory_limit_mb``, tiled denoising, pixel limits checked before any query or decode.

No timing assertions: memory is measured with tracemalloc (NumPy reports its buffers to it) or
read from the memory plan, which is a pure function of the sizes involved.
"""

from __future__ import annotations

import hashlib
import threading
import tracemalloc

import numpy as np
import pytest

from robust_api import RobustAPI, open_log
from robust_api.errors import DenoiserError, ImageTooLargeError, InvalidParameterError
from robust_api.images import as_image, image_digest
from robust_api.memory import BlockPlan, check_memory_limit, plan_blocks, slab_bytes_for
from robust_api.noise import SLAB_BYTES_PER_VALUE, NoiseSampler

MB = 1 << 20


# ------------------------------------------------------------------- the noise stream's contract


class FirstReleaseSampler:
    """The noise formula of the first release, verbatim: the whole batch at once, in float64.

    Kept here as the reference the slabbed generator must reproduce bit for bit (the noise
    stream is a public contract: committed logs and reused answers depend on it).
    """

    def __init__(self, image, key, noise_sd):
        self.image, self.noise_sd, self._key = image, float(noise_sd), key
        self._dim = int(image.size)
        words = self._dim + (self._dim % 2)
        self._counters_per_sample = -(-words // 4)
        self._words_per_sample = self._counters_per_sample * 4

    def standard_normal(self, start, stop):
        count = stop - start
        bit_generator = np.random.Philox(key=self._key, counter=start * self._counters_per_sample)
        words = bit_generator.random_raw(count * self._words_per_sample).reshape(count, self._words_per_sample)
        pairs = self._dim + (self._dim % 2)
        uniforms = ((words[:, :pairs] >> np.uint64(11)).astype(np.float64) + 1.0) * (2.0**-53)
        u1 = uniforms[:, 0::2]
        u2 = uniforms[:, 1::2]
        radius = np.sqrt(-2.0 * np.log(u1))
        normals = np.empty((count, pairs), dtype=np.float64)
        normals[:, 0::2] = radius * np.cos(2.0 * np.pi * u2)
        normals[:, 1::2] = radius * np.sin(2.0 * np.pi * u2)
        return normals[:, : self._dim].reshape((count,) + self.image.shape)

    def noisy(self, start, stop):
        if self.noise_sd == 0.0:
            return np.broadcast_to(self.image, (stop - start,) + self.image.shape).astype(np.float32)
        noisy = self.image.astype(np.float64) + self.noise_sd * self.standard_normal(start, stop)
        np.clip(noisy, 0.0, 1.0, out=noisy)
        return noisy.astype(np.float32)


SHAPES = [(1, 1, 1), (1, 3, 1), (3, 5, 1), (5, 6, 3), (7, 7, 3), (28, 28, 1), (31, 17, 3), (64, 65, 3)]


def slab_sizes(dim: int) -> list:
    """Slab budgets giving 4, 12, 100, 1000 and about dim/7 values per slab (several slabs per
    sample, with boundaries inside pixels and rows), plus the default (whole samples per slab);
    at most 64 slabs per sample, to keep the test fast."""
    values = {4, 12, 100, 1000, max(4, (dim // 7) // 4 * 4)}
    return [v * SLAB_BYTES_PER_VALUE for v in sorted(values) if dim / v <= 64] + [None]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_noise_is_bit_identical_to_the_first_release(shape):
    rng = np.random.default_rng(sum(shape))
    image = rng.random(shape, dtype=np.float32)
    image[0, 0, 0] = 0.0  # values at the clipping edges too
    image[-1, -1, -1] = 1.0
    digest = image_digest(image)
    for phase, seed, sd in (("estimation", 5, 0.25), ("selection", 2**62, 0.5), ("predict", 0, 0.12)):
        sampler = NoiseSampler(image, digest, seed, phase, sd)
        reference = FirstReleaseSampler(image, sampler._key, sd)
        expected = reference.noisy(3, 14)
        expected_z = reference.standard_normal(3, 14)
        for slab in slab_sizes(image.size):
            sliced = NoiseSampler(image, digest, seed, phase, sd, slab_bytes=slab)
            got = sliced.noisy(3, 14)
            assert got.dtype == np.float32 and got.shape == (11,) + shape
            assert np.array_equal(got, expected), (shape, phase, slab)
            assert np.array_equal(sliced.standard_normal(3, 14), expected_z)
            # batch boundaries: singles, and an uneven split, give the same values
            singles = np.concatenate([sliced.noisy(i, i + 1) for i in range(3, 14)])
            split = np.concatenate([sliced.noisy(3, 4), sliced.noisy(4, 9), sliced.noisy(9, 14)])
            assert np.array_equal(singles, expected) and np.array_equal(split, expected)
            out = np.full((11,) + shape, np.nan, np.float32)
            assert sliced.noisy(3, 14, out=out) is out and np.array_equal(out, expected)


def test_noise_free_copies_are_exact():
    image = np.random.default_rng(0).random((9, 11, 3), dtype=np.float32)
    copies = NoiseSampler(image, image_digest(image), 1, "clean", 0.0, slab_bytes=4 * SLAB_BYTES_PER_VALUE).noisy(0, 3)
    assert copies.dtype == np.float32 and all(np.array_equal(c, image) for c in copies)


def test_noise_slab_memory_is_bounded():
    """The float64 working memory of the generator stays within its slab budget, whatever the
    image size and the number of copies; the first release needed 8+ bytes per value of the batch."""
    image = np.random.default_rng(0).random((300, 400, 3), dtype=np.float32)  # 360,000 values
    slab = 1 * MB
    sampler = NoiseSampler(image, image_digest(image), 1, "estimation", 0.25, slab_bytes=slab)
    assert sampler.slab_values < image.size  # the image is cut into several slabs per copy
    out = np.empty((4,) + image.shape, np.float32)
    tracemalloc.start()
    try:
        sampler.noisy(0, 4, out=out)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak <= slab, f"{peak} bytes traced for a {slab}-byte slab"
    # the reference formula on the same request holds whole float64 batches
    reference = FirstReleaseSampler(image, sampler._key, 0.25)
    tracemalloc.start()
    try:
        expected = reference.noisy(0, 4)
        _, old_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert np.array_equal(expected, out)
    assert old_peak > 8 * 4 * image.size > 10 * slab


def test_small_images_are_generated_several_copies_per_slab():
    image = np.random.default_rng(1).random((28, 28, 1), dtype=np.float32)
    sampler = NoiseSampler(image, image_digest(image), 3, "estimation", 0.25, slab_bytes=1 * MB)
    assert sampler._samples_per_slab() > 10
    out = np.empty((500,) + image.shape, np.float32)
    tracemalloc.start()
    try:
        sampler.noisy(0, 500, out=out)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak <= 1 * MB
    assert np.array_equal(out, FirstReleaseSampler(image, sampler._key, 0.25).noisy(0, 500))


# ------------------------------------------------------------------------------- memory plans


def test_memory_limit_is_validated():
    assert check_memory_limit(None) == 1024 * MB
    assert check_memory_limit(64) == 64 * MB and check_memory_limit(100.5) == int(100.5 * MB)
    for bad in (0, -1, 15, 8.0, float("nan"), float("inf"), True, "1GB", [1024]):
        with pytest.raises(InvalidParameterError, match="memory_limit_mb"):
            check_memory_limit(bad)
        with pytest.raises(InvalidParameterError, match="memory_limit_mb"):
            RobustAPI(lambda b: ["A"] * len(b), log=False, memory_limit_mb=bad)
    for bad in (0, -5, 1.5, True, "many"):
        with pytest.raises(InvalidParameterError, match="max_pixels"):
            RobustAPI(lambda b: ["A"] * len(b), log=False, max_pixels=bad)
    with pytest.raises(InvalidParameterError, match="downscale"):
        RobustAPI(lambda b: ["A"] * len(b), log=False, downscale="yes")


def _peak_copies(plan: BlockPlan, denoiser_copies: int, scratch: float) -> float:
    """The copies alive at once under ``plan``, recomputed from its fields (the accounting of
    robust_api.memory's docstring)."""
    if denoiser_copies == 0:
        return (plan.in_flight + 1) * plan.batch + plan.in_flight * scratch
    if plan.in_flight == 1:
        return max(denoiser_copies * plan.block, plan.block + scratch)
    return plan.in_flight * (plan.batch + scratch) + denoiser_copies * plan.block


@pytest.mark.parametrize("denoiser_copies", [0, 2, 3])
@pytest.mark.parametrize("concurrency", [1, 4, 16])
@pytest.mark.parametrize("scratch", [0.0, 0.75])
def test_plans_stay_within_the_budget(denoiser_copies, concurrency, scratch):
    for copy_bytes in (3136, 600_000, 12 * MB, 288 * MB):
        for budget in (16 * MB, 100 * MB, 1024 * MB, 4096 * MB):
            for samples in (1, 7, 120, 100_000):
                plan = plan_blocks(copy_bytes, samples, 256, concurrency, budget, denoiser_copies, scratch)
                if plan is None:
                    # refused only when not even one request of one copy fits
                    assert (budget - slab_bytes_for(budget)) / copy_bytes < max(2 + scratch, denoiser_copies)
                    continue
                assert 1 <= plan.batch <= min(256, samples, plan.block) and plan.block <= max(samples, 1)
                assert 1 <= plan.in_flight <= concurrency
                used = plan.slab_bytes + _peak_copies(plan, denoiser_copies, scratch) * copy_bytes
                assert used <= plan.bytes + 1 <= budget + 1
                if plan.copy_batches:
                    assert plan.block > plan.batch and plan.in_flight > 1


def test_small_images_keep_full_batches():
    plan = plan_blocks(28 * 28 * 4, 120, 256, 1, 1024 * MB)
    assert (plan.batch, plan.block, plan.in_flight) == (120, 120, 1)
    plan = plan_blocks(224 * 224 * 3 * 4, 1000, 16, 16, 1024 * MB, denoiser_copies=2)
    assert plan.batch == 16 and plan.in_flight == 16 and plan.block >= 64


def test_a_24_megapixel_photo_fits_the_default_budget_one_copy_at_a_time():
    copy = 6000 * 4000 * 3 * 4
    plan = plan_blocks(copy, 120, 256, 1, 1024 * MB)
    assert (plan.batch, plan.block, plan.in_flight) == (1, 1, 1) and plan.bytes <= 1024 * MB
    plan = plan_blocks(copy, 120, 16, 16, 1024 * MB, request_scratch=0.75)  # a cloud provider
    assert plan.in_flight == 1 and plan.bytes <= 1024 * MB
    assert plan_blocks(copy, 120, 256, 1, 768 * MB, denoiser_copies=2) is not None  # 1024 − activations


def recorder(log: dict, lock: threading.Lock, active: list):
    """A callable provider that records each image's checksum by request and the most requests
    seen at once; labels by mean brightness."""

    def classify(batch):
        with lock:
            active[0] += 1
            active[1] = max(active[1], active[0])
        try:
            sums = [hashlib.sha256(np.ascontiguousarray(x).tobytes()).hexdigest() for x in batch]
            with lock:
                log.setdefault("batches", []).append(len(batch))
                log.setdefault("sums", []).extend(sums)
            return ["dark" if float(x.mean()) < 0.5 else "light" for x in batch]
        finally:
            with lock:
                active[0] -= 1

    return classify


def _run(image, memory_limit_mb, concurrency=None, denoiser=None, **kwargs):
    log, lock, active = {}, threading.Lock(), [0, 0]
    api = RobustAPI(recorder(log, lock, active), log=False, seed=3, denoiser=denoiser,
                    memory_limit_mb=memory_limit_mb, concurrency=concurrency, device="cpu", **kwargs)
    cert = api.certify(image, noise_sd=0.25, N0=4, N=40)
    return api, cert, log, active[1]


@pytest.mark.torch
def test_blocks_and_requests_follow_the_budget():
    image = np.random.default_rng(2).random((512, 512, 3), dtype=np.float32)  # 3 MB per copy
    big_api, big_cert, big_log, _ = _run(image, 1024)
    assert max(big_log["batches"]) == 40  # one request per phase under the default budget
    api, cert, log, _ = _run(image, 16)
    # 16 MB: 1 MB slab, 15 MB for copies: one request in flight plus one being generated -> 2 copies each
    assert max(log["batches"]) == 2 and sum(log["batches"]) == 44
    assert api.memory.peak_reserved <= api.memory.budget == 16 * MB
    # the budget changes how copies are grouped, never their values or the certificate
    assert sorted(log["sums"]) == sorted(big_log["sums"])
    assert (cert.label, cert.radius, cert.counts) == (big_cert.label, big_cert.radius, big_cert.counts)


def test_memory_traced_during_a_call_stays_within_the_budget():
    image = np.random.default_rng(4).random((512, 512, 3), dtype=np.float32)
    api = RobustAPI(lambda b: ["dark" if float(x.mean()) < 0.5 else "light" for x in b], log=False, seed=1,
                    memory_limit_mb=16)
    api.certify(image, noise_sd=0.25, N0=2, N=4)  # warm-up: imports, caches
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base, _ = tracemalloc.get_traced_memory()
        api.certify(image, noise_sd=0.25, N0=10, N=100)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # the budget, plus the canonical copy of the image (3 MB) and 2 MB for the log and records
    assert peak - base <= 16 * MB + image.nbytes + 2 * MB, f"{(peak - base) / MB:.1f} MB"


@pytest.mark.torch
def test_requests_in_flight_follow_the_budget():
    image = np.random.default_rng(5).random((256, 512, 3), dtype=np.float32)  # 1.5 MB per copy
    # 16 MB: 15 MB / 1.5 MB = 10 copies: 4 in flight + 1 being generated, 2 copies each
    api, _, log, most = _run(image, 16, concurrency=4)
    assert api.concurrency == 4
    assert most <= 4 and max(log["batches"]) <= 2
    wide = np.random.default_rng(6).random((512, 680, 3), dtype=np.float32)  # 3.98 MB per copy
    # 15 MB / 3.98 MB = 3.77 copies: 2 requests in flight + 1 being generated, 1 copy each
    api, _, log, most = _run(wide, 16, concurrency=4)
    assert most <= 2 and max(log["batches"]) == 1


def test_concurrent_images_share_the_budget():
    images = [np.random.default_rng(i).random((256, 256, 3), dtype=np.float32) for i in range(4)]  # 0.75 MB each
    log, lock, active = {}, threading.Lock(), [0, 0]
    api = RobustAPI(recorder(log, lock, active), log=False, seed=0, concurrency=4, memory_limit_mb=16)
    certs = api.certify_many(images, noise_sd=0.25, N0=4, N=60, parallel=4)
    assert len(certs) == 4 and sum(log["batches"]) == 4 * 64
    assert 0 < api.memory.peak_reserved <= api.memory.budget
    assert api.memory.reserved == 0  # every phase gave its reservation back


def test_copies_that_cannot_fit_are_refused_before_any_query_or_log_write(tmp_path):
    calls = []
    path = tmp_path / "q.sqlite3"
    api = RobustAPI(lambda b: calls.append(len(b)) or ["A"] * len(b), log=path, seed=0, memory_limit_mb=32)
    huge = np.broadcast_to(np.zeros((1, 1, 3), np.uint8), (3000, 2000, 3))  # 72 MB per float32 copy, no memory
    for method in (api.certify, api.predict):
        with pytest.raises(ImageTooLargeError, match="memory_limit_mb") as excinfo:
            method(huge, noise_sd=0.25)
        assert "downscale=True" in str(excinfo.value)
    with pytest.raises(ImageTooLargeError):
        api.certify_many([np.zeros((8, 8), np.uint8), huge], noise_sd=0.25)
    assert calls == [] and len(list(open_log(path))) == 0


# ------------------------------------------------------------------------------ the denoiser


def _dncnn(depth=5, width=8, channels=3, seed=0):
    torch = pytest.importorskip("torch")
    from robust_api.denoisers.dncnn import DnCNN

    torch.manual_seed(seed)
    module = DnCNN(channels, depth, width)
    for parameter in module.parameters():
        torch.nn.init.normal_(parameter, 0.0, 0.1)
    return module.eval()


def test_tiled_denoising_equals_the_untiled_result():
    from robust_api.torch_utils import ModuleDenoiser

    module = _dncnn()
    denoiser = ModuleDenoiser(module, device="cpu")
    assert denoiser.receptive_radius == 5
    images = np.random.default_rng(0).random((3, 61, 77, 3), dtype=np.float32)
    whole = denoiser(images)
    assert denoiser.tiles_run == 0
    per_pixel = 8 * 16
    denoiser.activation_bytes = 30 * 30 * per_pixel  # a 30×30 tile with its halo: 20×20 inside
    assert denoiser.tile_size(images.shape[1:]) == 20
    tiled = denoiser(images)
    assert denoiser.tiles_run >= 4 * 4
    np.testing.assert_allclose(tiled, whole, rtol=0, atol=1e-5)
    assert np.abs(whole - images).max() > 0.01  # the module does change the images


def test_denoiser_without_a_receptive_radius_is_refused_before_any_query():
    torch = pytest.importorskip("torch")

    class Global(torch.nn.Module):  # output depends on every pixel: cannot be tiled
        activation_channels = 64

        def forward(self, x):
            return x - x.mean(dim=(2, 3), keepdim=True) + 0.5

    calls = []
    api = RobustAPI(lambda b: calls.append(1) or ["A"] * len(b), denoiser=Global(), log=False, seed=0,
                    device="cpu", memory_limit_mb=16)
    image = np.full((300, 300, 3), 0.5, np.float32)  # 300·300·64·16 B = 88 MB of activations > 4 MB
    with pytest.raises(ImageTooLargeError, match="receptive radius"):
        api.certify(image, noise_sd=0.25, N0=2, N=4)
    assert calls == []
    module = Global()
    module.receptive_radius = 300  # declared: tiling is allowed, but a tile would be too small
    api = RobustAPI(lambda b: ["A"] * len(b), denoiser=module, log=False, seed=0, device="cpu", memory_limit_mb=16)
    with pytest.raises(ImageTooLargeError, match="too small for its receptive radius"):
        api.certify(image, noise_sd=0.25, N0=2, N=4)
    from robust_api.torch_utils import ModuleDenoiser, receptive_radius

    module.receptive_radius = -1
    with pytest.raises(DenoiserError, match="receptive_radius"):
        receptive_radius(module)
    assert receptive_radius(Global()) is None and ModuleDenoiser(_dncnn(depth=7), device="cpu").receptive_radius == 7


def test_certify_with_a_tiled_denoiser_matches_the_untiled_certificate():
    image = np.random.default_rng(7).random((160, 160, 3), dtype=np.float32)
    module = _dncnn(depth=5, width=16)
    # 16 MB: 4 MB of activations: 16·16 B per pixel -> a 128×128 tile at most, so 160×160 is tiled
    small_api, small_cert, small_log, _ = _run(image, 16, denoiser=module)
    assert small_api.denoiser.tiles_run > 0
    big_api, big_cert, big_log, _ = _run(image, 1024, denoiser=module)
    assert big_api.denoiser.tiles_run == 0
    assert (small_cert.label, small_cert.counts) == (big_cert.label, big_cert.counts)
    assert small_api.memory.peak_reserved <= small_api.memory.budget == 12 * MB


# ------------------------------------------------------------------------------- pixel limits


def test_pixel_limit_is_checked_before_any_query_or_log_write(tmp_path):
    calls = []
    path = tmp_path / "q.sqlite3"
    api = RobustAPI(lambda b: calls.append(len(b)) or ["A"] * len(b), log=path, seed=0, max_pixels=100)
    assert api.pixel_limit == 100
    with pytest.raises(ImageTooLargeError, match="11×10 = 110 pixels") as excinfo:
        api.certify(np.zeros((11, 10), np.uint8), noise_sd=0.25)
    assert "downscale=True" in str(excinfo.value)
    assert calls == [] and len(list(open_log(path))) == 0
    api.certify(np.zeros((10, 10), np.uint8), noise_sd=0.25, N0=1, N=2)  # at the limit: accepted
    assert sum(calls) == 3


def test_default_pixel_limit_is_the_providers():
    api = RobustAPI(lambda b: ["A"] * len(b), log=False)
    assert api.pixel_limit == 50_000_000
    huge = np.broadcast_to(np.zeros((1, 1, 1), np.uint8), (10_000, 10_000, 1))  # 100 MP, no memory
    with pytest.raises(ImageTooLargeError, match="50,000,000"):
        api.certify(huge, noise_sd=0.25)


def test_downscale_certifies_and_logs_the_smaller_image():
    seen = []
    api = RobustAPI(lambda b: seen.append(b.shape) or ["A"] * len(b), log=False, seed=0, max_pixels=400,
                    downscale=True)
    image = np.random.default_rng(0).integers(0, 256, (60, 30, 3), dtype=np.uint8)
    cert = api.certify(image, noise_sd=0.25, N0=1, N=3)
    small = as_image(image, max_pixels=400, downscale=True)
    assert small.shape == (28, 14, 3)  # 392 pixels, the aspect ratio kept
    assert all(shape[1:] == small.shape for shape in seen)
    assert cert.logs.header.image_shape == small.shape
    assert cert.logs.header.image_digest == image_digest(small) != image_digest(as_image(image))


def test_huge_png_is_refused_from_its_header_without_decoding(tmp_path, monkeypatch):
    from PIL import Image, ImageFile

    path = tmp_path / "huge.png"
    Image.new("L", (8000, 8000)).save(path)  # 64 MP, a small file; below Pillow's bomb guard
    decoded = []
    original = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: decoded.append(1) or original(self))
    calls = []
    api = RobustAPI(lambda b: calls.append(1) or ["A"] * len(b), log=False)
    with pytest.raises(ImageTooLargeError, match="8000×8000 = 64,000,000 pixels"):
        api.certify(path, noise_sd=0.25)
    assert decoded == [] and calls == []
