"""RobustAPI end to end: the predecessor's calls, results, noise, denoisers, the local provider."""

import copy
from pathlib import Path

import numpy as np
import pytest

import robust_api
from doubles import FakeProvider
from robust_api import ABSTAIN, CallLog, Certificate, Prediction, RobustAPI
from robust_api.images import image_digest
from robust_api.noise import NoiseSampler


def halfspace(batch):
    return np.where(batch[:, 0, 0, 0] < 0.5, "A", "B").tolist()


@pytest.fixture
def image():
    return np.full((8, 8, 3), 0.2, dtype=np.float32)


def test_predecessor_calls_unpack_as_before(tmp_path, image):
    online = RobustAPI(halfspace, denoiser=None, online=True, log=tmp_path / "log.sqlite3", seed=0)
    label, counts, logs = online.predict(image, N=100, noise_sd=0.25)
    assert label == "A" and sum(counts.values()) == 100 and len(logs) == 100
    label, radius, logs = online.certify(image, 0.25, 20, 100, 0.001)  # positional, as certify_api.py did
    assert label == "A" and 0 < radius <= 0.3 and len(logs) == 120
    offline = RobustAPI("azure", online=False)
    label2, counts2 = offline.predict(logs)
    assert label2 == "A" and sum(counts2.values()) == 100
    label3, radius3 = offline.certify(logs, noise_sd=0.25, N0=20, N=100, alpha=0.001)
    assert (label3, radius3) == (label, radius)
    # the clean label of each image, as the predecessor obtained it: one clean query
    clean_label, clean_counts, clean_log = online.predict(image, N=1, noise_sd=0)
    assert clean_label == "A" and clean_counts == {"A": 1} and len(clean_log) == 1
    assert clean_log[0].phase == "clean"


def test_results_have_named_fields(image):
    api = RobustAPI(halfspace, log=False, seed=3)
    cert = api.certify(image, noise_sd=0.25, N0=20, N=200, alpha=0.001)
    assert isinstance(cert, Certificate)
    assert cert.label == "A" and cert.queries == 220 and cert.n0 == 20 and cert.n == 200
    assert cert.counts["A"] + cert.counts.get("B", 0) == 200 and cert.errors == 0
    assert 0.5 < cert.p_lower < 1 and cert.method == "cohen"
    assert isinstance(cert.logs, CallLog) and cert.logs.seed == 3
    assert tuple(cert) == (cert.label, cert.radius, cert.logs) and cert[1] == cert.radius and len(cert) == 3
    pred = api.predict(image, N=50, noise_sd=0.25)
    assert isinstance(pred, Prediction) and pred.queries == 50 and pred.n == 50
    offline = RobustAPI("x", online=False).certify(cert.logs)
    assert len(offline) == 2 and offline.queries == 0 and offline.offline


def test_abstain_is_a_sentinel(image):
    api = RobustAPI(lambda b: ["A" if i % 2 else "B" for i in range(len(b))], log=False, seed=1)
    cert = api.certify(image, noise_sd=0.25, N0=10, N=100)
    assert cert.label is ABSTAIN and cert.radius == 0.0 and cert.abstained
    assert ABSTAIN != "ABSTAIN" and ABSTAIN != "-1" and repr(ABSTAIN) == "ABSTAIN"
    assert ABSTAIN == -1 and cert.label == -1  # the predecessor's `top_class == -1`
    assert copy.deepcopy(ABSTAIN) is ABSTAIN
    assert api.predict(image, N=100, noise_sd=0.25).label is ABSTAIN


def test_noise_is_reproducible_per_index():
    img = np.random.default_rng(0).random((5, 6, 3), dtype=np.float32)
    digest = image_digest(img)
    sampler = NoiseSampler(img, digest, 42, "estimation", 0.25)
    batch = sampler.noisy(0, 9)
    singles = np.concatenate([sampler.noisy(i, i + 1) for i in range(9)])
    assert np.array_equal(batch, singles)
    assert np.array_equal(batch[3:7], sampler.noisy(3, 7))
    assert batch.dtype == np.float32 and batch.min() >= 0 and batch.max() <= 1
    # different phase, seed or image -> different noise
    assert not np.allclose(batch, NoiseSampler(img, digest, 42, "selection", 0.25).noisy(0, 9))
    assert not np.allclose(batch, NoiseSampler(img, digest, 43, "estimation", 0.25).noisy(0, 9))
    other = img.copy()
    other[0, 0, 0] = 0.5
    assert not np.allclose(batch[:, 1:], NoiseSampler(other, image_digest(other), 42, "estimation", 0.25).noisy(0, 9)[:, 1:])


def test_noise_is_gaussian_with_the_right_scale():
    img = np.full((16, 16, 1), 0.5, dtype=np.float32)
    z = NoiseSampler(img, image_digest(img), 7, "estimation", 0.1).standard_normal(0, 200).ravel()
    assert abs(z.mean()) < 0.01 and abs(z.std() - 1) < 0.01
    # Kolmogorov-Smirnov against N(0, 1)
    from scipy.stats import kstest

    assert kstest(z, "norm").pvalue > 1e-3
    noisy = NoiseSampler(img, image_digest(img), 7, "estimation", 0.1).noisy(0, 200)
    assert abs(float((noisy - 0.5).std()) - 0.1) < 0.002


def test_same_seed_same_copies_through_the_api(image):
    seen = []

    def recorder(batch):
        seen.append(batch.copy())
        return halfspace(batch)

    RobustAPI(recorder, log=False, seed=11).predict(image, N=30, noise_sd=0.25)
    RobustAPI(recorder, log=False, seed=11).predict(image, N=30, noise_sd=0.25)
    RobustAPI(recorder, log=False, seed=12).predict(image, N=30, noise_sd=0.25)
    assert np.array_equal(seen[0], seen[1]) and not np.array_equal(seen[0], seen[2])


def test_selection_and_estimation_never_share_noise(image):
    recorder = FakeProvider(batch=1000, keep=True)
    cert = RobustAPI(recorder, log=False, seed=5).certify(image, noise_sd=0.25, N0=10, N=10)
    selection, estimation = recorder.batches
    assert cert.logs.phase_records("selection")[0].phase == "selection"
    assert not any(np.array_equal(a, b) for a in selection for b in estimation)


@pytest.mark.torch
def test_nn_module_denoiser_and_callable_denoiser(image):
    import torch

    received = []

    def provider(batch):
        received.append(batch.copy())
        return halfspace(batch)

    class Half(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = torch.nn.Parameter(torch.tensor(0.5))

        def forward(self, x):  # [B, C, H, W]: x + σz, not clipped
            return x * self.scale

    cert = RobustAPI(provider, denoiser=Half(), log=False, seed=1, device="cpu").certify(image, noise_sd=0.25, N0=5, N=20)
    assert cert.logs.denoiser_id.endswith("Half") and len(cert.logs.denoiser_digest) == 64
    # the module halves the unclipped copies (some above 1 with this seed); the output is clipped
    assert 0.5 < max(float(b.max()) for b in received) <= 0.5 * (0.2 + 0.25 * 6)
    assert min(float(b.min()) for b in received) == 0.0
    cert2 = RobustAPI(provider, denoiser=lambda b: np.zeros_like(b), log=False, seed=1).certify(image, noise_sd=0.25, N0=5, N=20)
    assert cert2.counts == {"A": 20} and cert2.logs.denoiser_digest is None


def test_label_fn_parses_raw_responses(image):
    api = RobustAPI(lambda b: [{"labels": [{"name": n, "score": 0.9}]} for n in halfspace(b)], label_fn=lambda r: r["labels"][0]["name"], log=False, seed=0)
    cert = api.certify(image, noise_sd=0.25, N0=5, N=50)
    assert cert.label == "A" and cert.logs[0].raw["labels"][0]["score"] == 0.9


@pytest.mark.torch
def test_local_provider_bundled_model_certifies_example_images(tmp_path):
    from pathlib import Path

    images = sorted(Path(__file__).resolve().parents[2].joinpath("examples", "images").glob("*.png"))
    assert len(images) >= 30
    api = RobustAPI("local", log=tmp_path, seed=0, device="cpu")
    assert api.provider.identity == "local:fashion_mnist_cnn" and api.provider.model_version.startswith("sha256:")
    correct = 0
    for path in images[:10]:
        truth = path.stem.split("_", 3)[3]
        clean = api.predict(path, N=1, noise_sd=0)
        slug = "".join(c if c.isalnum() else "-" for c in clean.label.lower())
        correct += slug == truth
        cert = api.certify(path, noise_sd=0.25, N0=20, N=100, alpha=0.001)
        assert cert.queries == 120
        assert cert.logs[0].raw["labels"][0]["score"] > 0
    assert correct >= 8
    assert (tmp_path / "queries.sqlite3").exists()


@pytest.mark.torch
def test_local_provider_takes_a_user_module():
    import torch

    class Tiny(torch.nn.Module):
        def forward(self, x):  # [B, 3, 4, 4] -> logits [B, 2]
            mean = x.mean(dim=(1, 2, 3))
            return torch.stack([0.5 - mean, mean - 0.5], dim=1)

    api = RobustAPI("local", model=Tiny(), class_names=["dark", "light"], log=False, seed=0)
    dark = api.certify(np.full((4, 4, 3), 0.2, np.float32), noise_sd=0.1, N0=10, N=100)
    assert dark.label == "dark" and dark.radius > 0.1


@pytest.mark.torch
def test_local_provider_checks_image_size_before_querying():
    api = RobustAPI("local", log=False)
    with pytest.raises(robust_api.InvalidImageError, match="28×28×1"):
        api.certify(np.zeros((32, 32, 3), np.float32), noise_sd=0.25)


def test_public_surface_is_documented():
    from pathlib import Path

    readme = Path(__file__).resolve().parents[2].joinpath("README.md").read_text()
    for name in robust_api.__all__:
        if name.startswith("__"):
            continue
        assert name in readme, f"{name} is exported but not mentioned in README.md"
        assert getattr(robust_api, name) is not None


@pytest.mark.torch
def test_recorded_sample_log_replays_offline_and_reproduces_online():
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    log = robust_api.open_log(root / "query_logs" / "fashion_mnist_local_seed0.jsonl")
    calls = list(log)
    assert len(calls) == 30 and [c.kind for c in calls[:3]] == ["predict", "certify", "certify"]
    first_image = sorted(root.joinpath("examples", "images").glob("*.png"))[0]
    offline = RobustAPI("local", online=False)
    certified = [offline.certify(c) for c in calls if c.kind == "certify"]
    assert all(c.n0 == 20 and c.n == 100 and c.queries == 0 for c in certified)
    # the same seed and image, queried again online, give the same answers record by record
    fresh = RobustAPI("local", log=False, seed=0, device="cpu").certify(first_image, noise_sd=0.12, N0=20, N=100)
    recorded = calls[1]
    assert recorded.image_digest == fresh.logs.image_digest
    assert [r.label for r in recorded] == [r.label for r in fresh.logs]
    assert (fresh.label, fresh.radius) == tuple(offline.certify(recorded))


@pytest.mark.torch
def test_local_provider_checkpoint_path_and_bad_checkpoints(tmp_path):
    import torch

    from robust_api.providers.local import BUNDLED_MODEL

    bundled = Path(robust_api.__file__).parent / "assets" / BUNDLED_MODEL
    by_path = RobustAPI("local", model=bundled, log=False)
    assert by_path.provider.model_version == RobustAPI("local", log=False).provider.model_version
    assert by_path.provider.class_names[0] == "T-shirt/top"
    not_weights = tmp_path / "model.safetensors"
    not_weights.write_text("not a checkpoint")
    with pytest.raises(robust_api.InvalidParameterError, match="not a readable safetensors"):
        RobustAPI("local", model=not_weights, log=False)
    from safetensors.torch import save_file

    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign))
    with pytest.raises(robust_api.InvalidParameterError, match="metadata"):
        RobustAPI("local", model=foreign, log=False)
    wrong_keys = tmp_path / "wrong.safetensors"
    save_file({"w": torch.zeros(2)}, str(wrong_keys), metadata={"format": "robust_api.classifier/1", "arch": "fashion_mnist_cnn", "class_names": "[]", "input_shape": "[1, 28, 28]"})
    with pytest.raises(robust_api.InvalidParameterError, match="do not fit"):
        RobustAPI("local", model=wrong_keys, log=False)
    with pytest.raises(robust_api.InvalidParameterError, match="checkpoint not found"):
        RobustAPI("local", model=tmp_path / "missing.safetensors", log=False)


def test_sixteen_bit_png_keeps_its_precision(tmp_path):
    from PIL import Image

    from robust_api.images import as_image

    values = np.array([[0, 1, 257], [1000, 40000, 65535]], dtype=np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(values).save(path)
    loaded = as_image(path)
    assert loaded.shape == (2, 3, 1) and loaded.dtype == np.float32
    assert np.allclose(loaded[..., 0], values / 65535.0)


def test_clean_selection_sends_the_image_as_it_is():
    """selection="clean" queries the unperturbed image, without the denoiser (noisy copies are denoised)."""
    seen = []

    def classifier(batch):
        seen.append(batch.copy())
        return ["A"] * len(batch)

    def inverting_denoiser(batch):
        return 1.0 - batch

    image = np.full((4, 4, 1), 0.2, dtype=np.float32)
    api = RobustAPI(classifier, denoiser=inverting_denoiser, log=False, seed=3)
    cert = api.certify(image, noise_sd=0.25, selection="clean", N=30)
    assert cert.selection == "clean" and cert.n0 == 1 and cert.samples == 31
    clean_batch, *noisy_batches = seen
    assert clean_batch.shape == (1, 4, 4, 1)
    np.testing.assert_array_equal(clean_batch[0], image)
    noisy = np.concatenate(noisy_batches)
    assert noisy.shape[0] == 30
    assert noisy.mean() > 0.6  # denoised by the inverting denoiser (noisy copies average 0.2 before it)
