"""Natural photos from Debian packages (split by photo, licences) and the PhotoNet denoiser.

The catalogue tests run anywhere; the tests that read real photos skip when the Debian
packages are not installed (``apt-get install`` the ones in ``DEBIAN_PACKAGES``)."""

import collections

import numpy as np
import pytest
import torch

from robust_api.denoisers import photos
from robust_api.denoisers.registry import architecture_names, build_architecture
from robust_api.denoisers.loading import load_denoiser, save_denoiser
from robust_api.denoisers.photonet import PhotoNet
from robust_api.denoisers.training import add_noise, denoise_with_sd, train_denoiser
from robust_api.errors import DenoiserError, InvalidParameterError, MissingDependencyError



pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ----------------------------------------------------------------------------------------------
# the catalogue and its split


def test_every_photo_is_in_exactly_one_split_and_named_once():
    names = [p.name for p in photos.CATALOGUE]
    assert len(set(names)) == len(names)
    assert len(set(p.path for p in photos.CATALOGUE)) == len(names)
    counts = collections.Counter(p.split for p in photos.CATALOGUE)
    assert set(counts) == set(photos.SPLITS)
    assert counts["test"] >= 10 and counts["val"] >= 4 and counts["train"] >= 25


def test_unknown_split_is_refused():
    with pytest.raises(InvalidParameterError, match="split must be one of"):
        photos.installed_photos("training")


def test_licence_comes_from_the_packages_copyright_file(tmp_path, monkeypatch):
    doc = tmp_path / "lomiri-wallpapers-16.04"
    doc.mkdir()
    (doc / "copyright").write_text(
        "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\n"
        "Files: *\nCopyright: somebody\nLicense: GPL-2+\n\n"
        "Files: 16.04/Dragonfly_by_Bolly.jpg\n 16.04/Other.jpg\nCopyright: Bolly\nLicense: CC-BY-SA-4.0\n\n"
        "Files: debian/*\nCopyright: packager\nLicense: MIT\n"
    )
    real_path = photos.Path

    def fake_path(*parts):
        if parts and str(parts[0]) == "/usr/share/doc":
            return real_path(tmp_path)
        return real_path(*parts)

    monkeypatch.setattr(photos, "Path", fake_path)
    photos._copyright_paragraphs.cache_clear()
    try:
        by_name = {p.name: p for p in photos.CATALOGUE}
        assert photos.photo_licence(by_name["dragonfly"]) == "CC-BY-SA-4.0"  # the later, specific paragraph
        assert photos.photo_licence(by_name["bridge"]) == "GPL-2+"  # only "*" matches; debian/* does not
        assert photos.photo_licence(by_name["aqua"]) == "unknown"  # mate-backgrounds: no copyright file here
    finally:
        photos._copyright_paragraphs.cache_clear()


def test_missing_package_names_what_to_install(monkeypatch):
    monkeypatch.setattr(photos, "_image_file", lambda photo: None)
    with pytest.raises(MissingDependencyError, match="apt-get install lomiri-wallpapers-16.04"):
        photos.load_photo_array(photos.CATALOGUE[0])
    with pytest.raises(MissingDependencyError, match="apt-get install .*mate-backgrounds"):
        photos.evaluation_crops("test")


def _fake_photos(tmp_path, monkeypatch, sizes):
    from PIL import Image

    rng = np.random.default_rng(0)
    catalogue = []
    for i, (split, (w, h)) in enumerate(sizes):
        path = tmp_path / f"p{i}.png"
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
        catalogue.append(photos.Photo(f"p{i}", "fake", str(path), split, f"p{i}.png"))
    monkeypatch.setattr(photos, "CATALOGUE", tuple(catalogue))


def test_evaluation_crops_are_five_deterministic_views_per_photo(tmp_path, monkeypatch):
    _fake_photos(tmp_path, monkeypatch, [("test", (640, 480)), ("test", (300, 900)), ("train", (500, 500))])
    crops, names = photos.evaluation_crops("test", size=64)
    assert crops.shape == (10, 64, 64, 3) and crops.dtype == np.uint8
    assert names[:5] == ["p0/center", "p0/top-left", "p0/top-right", "p0/bottom-left", "p0/bottom-right"]
    assert all(n.startswith("p1/") for n in names[5:])
    again, _ = photos.evaluation_crops("test", size=64)
    np.testing.assert_array_equal(crops, again)
    assert len({c.tobytes() for c in crops}) == 10  # views differ


def test_load_split_reads_only_that_split_at_each_scale(tmp_path, monkeypatch):
    _fake_photos(tmp_path, monkeypatch, [("train", (640, 480)), ("val", (300, 200)), ("train", (100, 120))])
    images = photos.load_split("train", shorter_sides=(96, 240))
    assert [tuple(t.shape) for t in images] == [(3, 96, 128), (3, 240, 320), (3, 115, 96), (3, 120, 100)]
    assert all(t.dtype == torch.uint8 for t in images)


@pytest.mark.skipif(not photos.installed_photos("test"), reason="Debian photo packages not installed")
def test_real_photos_load_with_a_known_licence():
    for photo in photos.installed_photos():
        assert photos.photo_licence(photo) != "unknown", photo.name
    crops, names = photos.evaluation_crops("test")
    assert crops.shape[1:] == (224, 224, 3) and len(names) == 5 * len(photos.installed_photos("test"))


# ----------------------------------------------------------------------------------------------
# PhotoNet


def _small_net(**kw):
    return build_architecture("photonet", widths=(8, 16, 16), blocks=1, **kw)


def test_photonet_is_registered_and_keeps_any_shape():
    assert "photonet" in architecture_names()
    net = _small_net().eval()
    for shape in [(2, 3, 32, 32), (1, 3, 37, 51), (1, 3, 9, 8)]:
        x = torch.rand(shape)
        assert net(x, 0.25).shape == shape


def test_photonet_uses_the_noise_level_it_is_given():
    torch.manual_seed(0)
    net = _small_net().eval()
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        low, high = net(x, 0.1), net(x, 0.4)
        per_image = net(x, torch.tensor([0.1, 0.4]))
        net.set_noise_sd(0.4)
        default = net(x)
    assert not torch.allclose(low, high)
    torch.testing.assert_close(per_image[0], low[0])
    torch.testing.assert_close(per_image[1], high[1])
    torch.testing.assert_close(default, high)


def test_photonet_without_a_noise_level_or_with_bad_settings_is_refused():
    net = _small_net()
    with pytest.raises(DenoiserError, match="needs σ"):
        net(torch.rand(1, 3, 8, 8))
    with pytest.raises(DenoiserError, match="noise_sd_range"):
        _small_net(noise_sd_range=(0.5, 0.2))
    with pytest.raises(DenoiserError, match="three positive widths"):
        build_architecture("photonet", widths=(8, 16))


def test_photonet_file_round_trip(tmp_path):
    net = _small_net().eval()
    path = save_denoiser(net, tmp_path / "p.safetensors", noise_sd=0.25)
    loaded = load_denoiser(path)
    assert isinstance(loaded, PhotoNet) and loaded.noise_sd == 0.25
    assert loaded.noise_sd_range == (0.0, 0.55)
    x = torch.rand(1, 3, 24, 24)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), net(x, 0.25))


def test_a_range_trained_photonet_file_takes_its_sigma_at_load_time(tmp_path):
    net = _small_net().eval()
    path = save_denoiser(net, tmp_path / "range.safetensors", noise_sd=None)
    bare = load_denoiser(path)
    assert bare.noise_sd is None and bare.fine_tuned_noise_sd is None
    with pytest.raises(DenoiserError, match=r"load_denoiser\(\.\.\., noise_sd=σ\)"):
        bare(torch.rand(1, 3, 16, 16))
    told = load_denoiser(path, noise_sd=0.12)
    assert told.noise_sd == 0.12 and told.fine_tuned_noise_sd is None
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(told(x), net(x, 0.12))


def _noise_level_warnings(runner, noise_sd):
    import warnings

    from robust_api.errors import DenoiserNoiseLevelWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        runner.warn_if_untrained(noise_sd)
    return [str(w.message) for w in caught if issubclass(w.category, DenoiserNoiseLevelWarning)]


def test_a_photonet_fine_tuned_for_one_sigma_warns_away_from_it(tmp_path):
    from robust_api.torch_utils import ModuleDenoiser

    tuned = load_denoiser(save_denoiser(_small_net(), tmp_path / "tuned.safetensors", noise_sd=0.25))
    assert tuned.fine_tuned_noise_sd == 0.25
    runner = ModuleDenoiser(tuned, device="cpu")
    assert _noise_level_warnings(runner, 0.26) == []  # within 10%
    message = _noise_level_warnings(runner, 0.12)
    assert len(message) == 1 and "fine-tuned for noise_sd=0.25" in message[0]
    assert "[0, 0.55]" in _noise_level_warnings(runner, 0.7)[0]  # outside the trained range
    ranged = ModuleDenoiser(load_denoiser(save_denoiser(_small_net(), tmp_path / "r.safetensors", noise_sd=None)),
                            device="cpu")
    assert _noise_level_warnings(ranged, 0.12) == [] and _noise_level_warnings(ranged, 0.5) == []


# ----------------------------------------------------------------------------------------------
# training: unclipped copies, a σ range, uint8 photos


def test_add_noise_is_unclipped_unless_asked():
    clean = torch.full((1, 3, 8, 8), 0.95)
    noisy = add_noise(clean, 0.5, torch.Generator().manual_seed(0))
    assert noisy.max() > 1.0 and noisy.min() < 0.0 + 0.95
    clipped = add_noise(clean, 0.5, torch.Generator().manual_seed(0), clip=True)
    torch.testing.assert_close(clipped, noisy.clamp(0, 1))
    per_image = add_noise(torch.zeros(2, 1, 64, 64), torch.tensor([0.0, 0.3]), torch.Generator().manual_seed(0))
    assert float(per_image[0].abs().max()) == 0.0 and 0.25 < float(per_image[1].std()) < 0.35


def test_training_a_conditioned_denoiser_on_a_sigma_range_from_uint8_photos(tmp_path):
    rng = np.random.default_rng(0)
    smooth = [torch.from_numpy(np.repeat(np.repeat(rng.integers(0, 256, (3, 6, 6), dtype=np.uint8), 8, 1), 8, 2))
              for _ in range(4)]
    torch.manual_seed(0)
    net = _small_net()
    seen = []
    original_forward = net.forward

    def recording_forward(x, noise_sd=None):
        seen.append((float(x.min()), float(x.max()), noise_sd))
        return original_forward(x, noise_sd)

    net.forward = recording_forward
    val = torch.stack([s.float() / 255 for s in smooth[:2]])
    history = train_denoiser(net, smooth, noise_sd=(0.1, 0.4), epochs=3, batch_size=8, patch_size=16,
                             patches_per_epoch=64, lr=3e-3, device="cpu", val_images=val,
                             checkpoint=tmp_path / "c.ckpt")
    assert len(history) == 3 and history[-1].loss < history[0].loss
    training_calls = [s for s in seen if isinstance(s[2], torch.Tensor)]
    assert training_calls, "the denoiser must be told each image's σ"
    sds = torch.cat([s[2] for s in training_calls])
    assert 0.1 <= float(sds.min()) and float(sds.max()) <= 0.4 and float(sds.std()) > 0.05
    assert min(s[0] for s in training_calls) < 0.0 and max(s[1] for s in training_calls) > 1.0  # unclipped
    with pytest.raises(InvalidParameterError, match="low < high"):
        train_denoiser(_small_net(), smooth, noise_sd=(0.4, 0.1), patch_size=16, device="cpu")
    with pytest.raises(InvalidParameterError, match="mse_weight"):
        train_denoiser(_small_net(), smooth, noise_sd=0.25, patch_size=16, mse_weight=-1, device="cpu")


def test_denoise_with_sd_leaves_unconditioned_denoisers_alone():
    calls = []

    class Plain(torch.nn.Module):
        def forward(self, x):
            calls.append(x.shape)
            return x

    x = torch.rand(1, 3, 4, 4)
    assert denoise_with_sd(Plain(), x, 0.3) is x and calls == [x.shape]


# ----------------------------------------------------------------------------------------------
# the photo aliases


@pytest.mark.parametrize("alias, sigma", [("photo-0.12", 0.12), ("photo-0.25", 0.25), ("photo-0.50", 0.50)])
def test_photo_aliases_load_the_recommended_denoiser_for_their_sigma(alias, sigma):
    from robust_api.denoisers.loading import PHOTO_ALIASES

    module = load_denoiser(alias, device="cpu")
    assert module.noise_sd == sigma and module.metadata["name"] == alias
    assert module.metadata["alias_of"] == PHOTO_ALIASES[alias][0]
    assert load_denoiser(alias, device="cpu", noise_sd=sigma).noise_sd == sigma
    with pytest.raises(DenoiserError, match=f"for noise_sd={sigma}, not 0.3"):
        load_denoiser(alias, device="cpu", noise_sd=0.3)


def test_a_photo_alias_denoises_a_noisy_photo_through_robust_api():
    from robust_api import RobustAPI

    rng = np.random.default_rng(0)
    photo = np.kron(rng.uniform(0.2, 0.8, (6, 6, 3)), np.ones((8, 8, 1))).astype(np.float32)
    seen = []

    def classifier(batch):
        seen.append(np.asarray(batch))
        return ["x"] * len(batch)

    api = RobustAPI(classifier, denoiser="photo-0.25", log=False, seed=0)
    api.predict(photo, N=4, noise_sd=0.25)
    sent = np.concatenate(seen)
    assert api.denoiser.identity == "denoiser:photo-0.25"
    assert sent.min() >= 0.0 and sent.max() <= 1.0
    noisy_error = 0.25  # the noise alone has RMS 0.25 (before clipping)
    assert float(np.sqrt(((sent - photo) ** 2).mean())) < 0.5 * noisy_error


def test_a_checkpoint_from_before_unclipped_training_resumes_only_as_clipped(tmp_path):
    import json

    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    images = torch.rand(16, 3, 16, 16)
    kwargs = dict(noise_sd=0.25, epochs=2, batch_size=8, device="cpu", checkpoint=tmp_path / "c.ckpt")
    train_denoiser(_small_net(), images, **{**kwargs, "epochs": 1}, clip_noisy=True)
    # rewrite it as the previous release wrote it: no clip_noisy in its settings
    with safe_open(str(tmp_path / "c.ckpt"), framework="pt") as handle:
        metadata = handle.metadata()
    meta = json.loads(metadata["meta"])
    del meta["settings"]["clip_noisy"]
    meta["settings"]["epochs"] = 2
    save_file(load_file(str(tmp_path / "c.ckpt")), str(tmp_path / "c.ckpt"), metadata={**metadata, "meta": json.dumps(meta)})
    with pytest.raises(DenoiserError, match="was made with"):
        train_denoiser(_small_net(), images, **kwargs)  # unclipped now: would silently change the noise
    history = train_denoiser(_small_net(), images, **kwargs, clip_noisy=True)
    assert [h.epoch for h in history] == [2]
