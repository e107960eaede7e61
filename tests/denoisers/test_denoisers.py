"""Denoisers: architectures, the paper's checkpoints, robust_api files, training, RobustAPI use.

Everything runs on the CPU with small networks and tiny images. The references for the
denoised-smoothing paper's checkpoints are written here with ``torch.nn.functional`` only,
reading the raw state dicts, so they do not share code with the library's modules.
"""

import collections
import json
import math
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import robust_api
import robust_api.torch_utils as torch_utils
from robust_api import RobustAPI
from robust_api.denoisers import (
    DENOISER_FORMAT,
    DnCNN,
    DRUNet,
    MemNet,
    NonLocalMeans,
    add_noise,
    available,
    load_denoiser,
    psnr,
    save_denoiser,
    train_denoiser,
)
from robust_api.errors import DenoiserError, InvalidParameterError
from robust_api.torch_utils import ModuleDenoiser, denoiser_chunk_size

from doubles import Counting

CPU = torch.device("cpu")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ----------------------------------------------------------------------------------------------
# helpers


def _rand(*shape, seed=0):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


def _smooth_blobs(count, size=16, seed=0):
    """``count`` gray images [count, 1, size, size] in [0, 1]: sums of 1-3 Gaussian blobs."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    images = np.zeros((count, 1, size, size), np.float32)
    for i in range(count):
        for _ in range(rng.integers(1, 4)):
            cy, cx = rng.uniform(0, size, 2)
            width = rng.uniform(2.0, 5.0)
            images[i, 0] += rng.uniform(0.4, 0.9) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * width**2))
    return torch.from_numpy(np.clip(images, 0.0, 1.0))


def _small_dncnn(channels=1, seed=0, depth=3, width=8):
    torch.manual_seed(seed)
    return DnCNN(image_channels=channels, depth=depth, channels=width)


def _randomise_last_conv(module, scale=0.5, seed=1):
    """Give an (identity-initialised) DnCNN a non-zero last layer, so its output differs from x."""
    gen = torch.Generator().manual_seed(seed)
    last = [m for m in module.modules() if isinstance(m, torch.nn.Conv2d)][-1]
    with torch.no_grad():
        last.weight.copy_(scale * torch.randn(last.weight.shape, generator=gen))
    return module


# ----------------------------------------------------------------------------------------------
# 1. every architecture: [B, C, H, W] in [0, 1] -> same shape


def _build(arch, channels):
    torch.manual_seed(0)
    if arch == "dncnn":
        return DnCNN(image_channels=channels, depth=4, channels=8)
    if arch == "memnet":
        return MemNet(image_channels=channels, channels=8, num_memory_blocks=2, num_residual_blocks=2)
    if arch == "drunet":
        module = DRUNet(image_channels=channels, widths=(4, 8, 8, 16), blocks=1)
        module.noise_sd = 0.25
        return module
    pytest.importorskip("skimage")
    module = load_denoiser("nl-means", noise_sd=0.25, device="cpu")
    assert isinstance(module, NonLocalMeans) and module.noise_sd == 0.25
    return module


ARCHS = ["dncnn", "memnet", "drunet", "nl-means"]


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("size", [(16, 16), (13, 17)])
def test_architectures_keep_the_shape(arch, channels, size):
    module = _build(arch, channels).eval()
    x = _rand(2, channels, *size, seed=channels)
    with torch.no_grad():
        out = module(x)
    assert out.shape == x.shape and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    # the images are denoised independently: one image alone gives the same output
    with torch.no_grad():
        single = module(x[1:])
    torch.testing.assert_close(single, out[1:], rtol=1e-5, atol=1e-5)

    runner = ModuleDenoiser(module, device="cpu")
    nhwc = x.permute(0, 2, 3, 1).numpy().copy()
    result = runner(nhwc)
    assert isinstance(result, np.ndarray) and result.dtype == np.float32
    assert result.shape == nhwc.shape
    assert result.min() >= 0.0 and result.max() <= 1.0
    np.testing.assert_allclose(result, out.clamp(0, 1).permute(0, 2, 3, 1).numpy(), rtol=1e-5, atol=1e-5)


def test_module_denoiser_clamps_and_returns_nhwc_float32():
    module = _randomise_last_conv(_small_dncnn(channels=3), scale=2.0).eval()
    x = _rand(3, 3, 5, 7)
    with torch.no_grad():
        raw = module(x)
    assert raw.min() < -0.1 and raw.max() > 1.1  # the clamp below has work to do
    result = ModuleDenoiser(module, device="cpu")(x.permute(0, 2, 3, 1).numpy())
    assert result.dtype == np.float32 and result.shape == (3, 5, 7, 3)
    assert result.flags.c_contiguous
    np.testing.assert_allclose(result, raw.clamp(0, 1).permute(0, 2, 3, 1).numpy(), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("channels", [1, 3])
def test_untrained_dncnn_is_the_identity(channels):
    module = _small_dncnn(channels=channels, depth=5, width=16).eval()
    x = _rand(2, channels, 13, 17)
    with torch.no_grad():
        assert torch.equal(module(x), x)
    # ... but not because the network ignores its layers: a non-zero last layer changes the output
    _randomise_last_conv(module)
    with torch.no_grad():
        assert (module(x) - x).abs().max() > 1e-3


def test_drunet_needs_its_noise_level():
    torch.manual_seed(0)
    module = DRUNet(image_channels=1, widths=(4, 4, 4, 4), blocks=1).eval()
    with pytest.raises(DenoiserError, match="noise_sd"):
        module(_rand(1, 1, 8, 8))
    module.noise_sd = 0.5
    out_half = module(_rand(1, 1, 8, 8)).detach()
    module.noise_sd = 0.12
    out_low = module(_rand(1, 1, 8, 8)).detach()
    assert not torch.allclose(out_half, out_low)  # σ really is an input


@pytest.mark.parametrize("arch", ["dncnn", "memnet", "drunet"])
def test_wrong_channel_count_input_raises(arch):
    module = _build(arch, 3).eval()
    with pytest.raises(DenoiserError, match=r"expects \[B, 3, H, W\].*\(2, 1, 8, 8\)"):
        module(_rand(2, 1, 8, 8))
    with pytest.raises(DenoiserError, match="expects"):
        module(_rand(3, 8, 8))
    with pytest.raises(DenoiserError, match="float"):
        module(torch.zeros(1, 3, 8, 8, dtype=torch.uint8))


def test_bad_architecture_arguments_raise():
    with pytest.raises(DenoiserError, match="image_channels"):
        DnCNN(image_channels=2)
    with pytest.raises(DenoiserError, match="depth"):
        DnCNN(image_channels=1, depth=2)
    with pytest.raises(DenoiserError, match="widths"):
        DRUNet(image_channels=1, widths=(4, 4, 4))
    with pytest.raises(DenoiserError, match="noise_sd"):
        load_denoiser("nl-means", device="cpu")


# ----------------------------------------------------------------------------------------------
# 2. the denoised-smoothing paper's checkpoints, checked against an independent reference


def _he(gen, cout, cin, k, gain=1.0):
    return gain * math.sqrt(2.0 / (cin * k * k)) * torch.randn(cout, cin, k, k, generator=gen)


def _bn_state(gen, prefix, channels):
    return {
        f"{prefix}.weight": 0.5 + torch.rand(channels, generator=gen),
        f"{prefix}.bias": 0.1 * torch.randn(channels, generator=gen),
        f"{prefix}.running_mean": 0.2 * torch.randn(channels, generator=gen),
        f"{prefix}.running_var": 0.5 + torch.rand(channels, generator=gen),
        f"{prefix}.num_batches_tracked": torch.tensor(1234, dtype=torch.long),
    }


def paper_dncnn_state(width=64, image_channels=3, depth=17, seed=0):
    """A state dict with the key layout of the paper's DnCNN (random weights and BN statistics)."""
    gen = torch.Generator().manual_seed(seed)
    state = collections.OrderedDict()
    state["dncnn.0.weight"] = _he(gen, width, image_channels, 3)
    state["dncnn.0.bias"] = 0.1 * torch.randn(width, generator=gen)
    for k in range(depth - 2):
        state[f"dncnn.{3 * k + 2}.weight"] = _he(gen, width, width, 3)
        state.update(_bn_state(gen, f"dncnn.{3 * k + 3}", width))
    state[f"dncnn.{3 * (depth - 2) + 2}.weight"] = _he(gen, image_channels, width, 3, gain=0.3)
    return state


def reference_dncnn(state, x, depth=17):
    """The paper's DnCNN forward, from the raw state dict: x - net(x)."""
    h = F.relu(F.conv2d(x, state["dncnn.0.weight"], state["dncnn.0.bias"], padding=1))
    for k in range(depth - 2):
        h = F.conv2d(h, state[f"dncnn.{3 * k + 2}.weight"], padding=1)
        b = f"dncnn.{3 * k + 3}"
        h = F.batch_norm(h, state[f"{b}.running_mean"], state[f"{b}.running_var"], state[f"{b}.weight"],
                         state[f"{b}.bias"], training=False, eps=1e-4)
        h = F.relu(h)
    return x - F.conv2d(h, state[f"dncnn.{3 * (depth - 2) + 2}.weight"], padding=1)


def _bnreluconv_state(gen, prefix, cin, cout, k, gain=0.5):
    state = _bn_state(gen, f"{prefix}.bn", cin)
    state[f"{prefix}.conv.weight"] = _he(gen, cout, cin, k, gain)
    return state


def paper_memnet_state(width=64, image_channels=3, memory_blocks=3, residual_blocks=6, seed=0):
    gen = torch.Generator().manual_seed(seed)
    state = collections.OrderedDict()
    state.update(_bnreluconv_state(gen, "feature_extractor", image_channels, width, 3))
    state.update(_bnreluconv_state(gen, "reconstructor", width, image_channels, 3, gain=0.3))
    for i in range(memory_blocks):
        for j in range(residual_blocks):
            for unit in ("relu_conv1", "relu_conv2"):
                state.update(_bnreluconv_state(gen, f"dense_memory.{i}.recursive_unit.{j}.{unit}", width, width, 3))
        state.update(_bnreluconv_state(gen, f"dense_memory.{i}.gate_unit", (residual_blocks + i + 1) * width,
                                       width, 1))
    return state


def _ref_bnreluconv(state, prefix, x, padding):
    h = F.batch_norm(x, state[f"{prefix}.bn.running_mean"], state[f"{prefix}.bn.running_var"],
                     state[f"{prefix}.bn.weight"], state[f"{prefix}.bn.bias"], training=False, eps=1e-5)
    return F.conv2d(F.relu(h), state[f"{prefix}.conv.weight"], padding=padding)


def reference_memnet(state, x, memory_blocks=3, residual_blocks=6):
    """The paper's MemNet forward, from the raw state dict."""
    out = _ref_bnreluconv(state, "feature_extractor", x, 1)
    long_term = [out]
    for i in range(memory_blocks):
        short_term = []
        h = out
        for j in range(residual_blocks):
            unit = f"dense_memory.{i}.recursive_unit.{j}"
            h = h + _ref_bnreluconv(state, f"{unit}.relu_conv2", _ref_bnreluconv(state, f"{unit}.relu_conv1", h, 1), 1)
            short_term.append(h)
        out = _ref_bnreluconv(state, f"dense_memory.{i}.gate_unit", torch.cat(short_term + long_term, dim=1), 0)
        long_term.append(out)
    return x + _ref_bnreluconv(state, "reconstructor", out, 1)


def _adam_state(state):
    """An Adam optimizer state_dict (after one step) over the float tensors of ``state``."""
    params = [torch.nn.Parameter(v.clone()) for v in state.values() if v.is_floating_point()]
    optimizer = torch.optim.Adam(params, lr=1e-3)
    sum(p.pow(2).sum() for p in params).backward()
    optimizer.step()
    return optimizer.state_dict()


def save_paper_checkpoint(path, arch, state, prefix=""):
    state = collections.OrderedDict((prefix + k, v) for k, v in state.items())
    torch.save({"epoch": 3, "arch": arch, "state_dict": state, "optimizer": _adam_state(state)}, path)
    return path


PAPER_CASES = {
    "cifar_dncnn": (lambda: paper_dncnn_state(64), reference_dncnn, ""),
    "cifar_dncnn_wide": (lambda: paper_dncnn_state(128), reference_dncnn, ""),
    "imagenet_dncnn": (lambda: paper_dncnn_state(64), reference_dncnn, "module."),
    "memnet": (lambda: paper_memnet_state(), reference_memnet, ""),
    "imagenet_memnet": (lambda: paper_memnet_state(), reference_memnet, "module."),
}


@pytest.mark.parametrize("arch", sorted(PAPER_CASES))
def test_paper_checkpoint_matches_reference_forward(tmp_path, arch):
    make_state, reference, prefix = PAPER_CASES[arch]
    state = make_state()
    path = save_paper_checkpoint(tmp_path / "checkpoint.pth.tar", arch, state, prefix)
    if prefix:
        raw = torch.load(path, weights_only=True)["state_dict"]
        assert all(k.startswith("module.") for k in raw)  # the file really has DataParallel keys

    module = load_denoiser(path, device="cpu")
    assert not module.training and module.image_channels == 3 and module.noise_sd is None
    assert set(module.state_dict()) == set(state)  # the paper's key layout, exactly
    x = _rand(2, 3, 8, 8, seed=5)
    with torch.no_grad():
        expected = reference(state, x)
        out = module(x)
    assert (expected - x).abs().max() > 0.05  # the reference network does something
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)

    # Guard on the test itself: with batch statistics (training mode) the output differs, so the
    # comparison above would catch a loader that left BatchNorm in training mode.
    with torch.no_grad():
        in_training_mode = module.train()(x)
    assert not torch.allclose(in_training_mode, expected, atol=1e-3)

    if arch == "memnet":  # (a cheap one to load twice) σ given at load time is recorded
        assert load_denoiser(path, device="cpu", noise_sd=0.5).noise_sd == 0.5


# ----------------------------------------------------------------------------------------------
# 3. wrong checkpoints give clear DenoiserErrors


@pytest.fixture(scope="module")
def cifar_state():
    return paper_dncnn_state(64)


def _ckpt(tmp_path, payload, name="checkpoint.pth.tar"):
    path = tmp_path / name
    torch.save(payload, path)
    return path


def test_unknown_paper_arch(tmp_path, cifar_state):
    path = _ckpt(tmp_path, {"epoch": 1, "arch": "cifar_resnet110", "state_dict": cifar_state})
    with pytest.raises(DenoiserError, match="unknown denoiser arch 'cifar_resnet110'") as info:
        load_denoiser(path, device="cpu")
    assert "cifar_dncnn" in str(info.value) and "imagenet_memnet" in str(info.value)


# (MemNet builds fast; a paper-size DnCNN takes seconds to initialise on a busy CPU.)


@pytest.fixture(scope="module")
def memnet_state():
    return paper_memnet_state()


def test_missing_key(tmp_path, memnet_state):
    state = collections.OrderedDict(memnet_state)
    del state["dense_memory.2.gate_unit.conv.weight"]
    path = _ckpt(tmp_path, {"arch": "memnet", "state_dict": state})
    with pytest.raises(DenoiserError, match=r"1 missing keys \['dense_memory\.2\.gate_unit\.conv\.weight'\]"):
        load_denoiser(path, device="cpu")


def test_extra_key(tmp_path, memnet_state):
    state = collections.OrderedDict(memnet_state)
    state["dense_memory.3.gate_unit.conv.weight"] = torch.zeros(64, 640, 1, 1)
    path = _ckpt(tmp_path, {"arch": "memnet", "state_dict": state})
    with pytest.raises(DenoiserError, match=r"1 unexpected keys \['dense_memory\.3\.gate_unit\.conv\.weight'\]"):
        load_denoiser(path, device="cpu")


def test_prefix_on_only_some_keys_is_not_stripped(tmp_path, memnet_state):
    state = collections.OrderedDict(("module." + k if k.startswith("feature") else k, v)
                                    for k, v in memnet_state.items())
    path = _ckpt(tmp_path, {"arch": "imagenet_memnet", "state_dict": state})
    with pytest.raises(DenoiserError, match="missing keys.*unexpected keys .*'module.feature_extractor"):
        load_denoiser(path, device="cpu")


def test_wrong_channel_count_checkpoint(tmp_path):
    gray = paper_dncnn_state(64, image_channels=1)
    path = _ckpt(tmp_path, {"arch": "cifar_dncnn", "state_dict": gray})
    with pytest.raises(DenoiserError, match="shape") as info:
        load_denoiser(path, device="cpu")
    message = str(info.value)
    assert "(64, 1, 3, 3)" in message and "(64, 3, 3, 3)" in message and "dncnn.0.weight" in message


def test_wrong_width_checkpoint(tmp_path):
    # a 32-channel MemNet state dict under the 64-channel name
    path = _ckpt(tmp_path, {"arch": "memnet", "state_dict": paper_memnet_state(width=32)})
    with pytest.raises(DenoiserError, match=r"shape \(32, 3, 3, 3\)"):
        load_denoiser(path, device="cpu")


@pytest.mark.parametrize("which", ["no arch", "no state_dict", "bare state_dict", "list"])
def test_not_a_paper_checkpoint(tmp_path, cifar_state, which):
    payload = {
        "no arch": {"epoch": 3, "state_dict": cifar_state},
        "no state_dict": {"epoch": 3, "arch": "cifar_dncnn"},
        "bare state_dict": cifar_state,
        "list": [1, 2, 3],
    }[which]
    with pytest.raises(DenoiserError, match="expected a dict with 'arch' and 'state_dict'"):
        load_denoiser(_ckpt(tmp_path, payload), device="cpu")


class Payload:
    """Unpickling this would create a directory (its ``__reduce__`` calls os.mkdir)."""

    def __init__(self, marker):
        self.marker = os.fspath(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


class SneakyDict(collections.OrderedDict):
    """An OrderedDict subclass: not plain data, so weights_only loading must refuse it."""


def test_pickled_code_is_refused_and_not_run(tmp_path, cifar_state):
    marker = tmp_path / "payload-ran"
    path = _ckpt(tmp_path, {"arch": "cifar_dncnn", "state_dict": cifar_state, "extra": Payload(marker)})
    with pytest.raises(DenoiserError, match="weights_only") as info:
        load_denoiser(path, device="cpu")
    assert "not a plain-data PyTorch checkpoint" in str(info.value)
    assert not marker.exists()
    # the payload is live: unrestricted unpickling (deliberately, here only) does run it
    control = tmp_path / "control-ran"
    torch.save(Payload(control), tmp_path / "control.pth.tar")
    torch.load(tmp_path / "control.pth.tar", weights_only=False)
    assert control.is_dir()


def test_ordered_dict_subclass_is_refused(tmp_path, cifar_state):
    path = _ckpt(tmp_path, {"arch": "cifar_dncnn", "state_dict": SneakyDict(cifar_state)})
    with pytest.raises(DenoiserError, match="weights_only"):
        load_denoiser(path, device="cpu")


def test_garbage_files(tmp_path):
    junk = bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8))
    (tmp_path / "junk.pth.tar").write_bytes(junk)
    with pytest.raises(DenoiserError, match="not a plain-data PyTorch checkpoint"):
        load_denoiser(tmp_path / "junk.pth.tar", device="cpu")
    (tmp_path / "junk.safetensors").write_bytes(junk)
    with pytest.raises(DenoiserError, match="not a readable safetensors file"):
        load_denoiser(tmp_path / "junk.safetensors", device="cpu")
    (tmp_path / "empty.pth").write_bytes(b"")
    with pytest.raises(DenoiserError):
        load_denoiser(tmp_path / "empty.pth", device="cpu")


def test_unknown_name_lists_the_shipped_ones(tmp_path):
    with pytest.raises(DenoiserError, match="no shipped denoiser or file named 'no-such-denoiser'") as info:
        load_denoiser("no-such-denoiser", device="cpu")
    message = str(info.value)
    names = available()
    if names:
        assert all(name in message for name in names)
    else:
        assert "(none shipped)" in message
    assert "nl-means" in message
    with pytest.raises(DenoiserError, match="no shipped denoiser or file"):
        load_denoiser(tmp_path / "missing.safetensors", device="cpu")


def _plain_safetensors(path, module, metadata):
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in module.state_dict().items()}, os.fspath(path), metadata=metadata)
    return path


def test_safetensors_without_robust_api_metadata(tmp_path):
    module = _small_dncnn()
    config = json.dumps(module.config())
    with pytest.raises(DenoiserError, match="has no robust_api.denoiser/1 metadata"):
        load_denoiser(_plain_safetensors(tmp_path / "a.safetensors", module, None), device="cpu")
    with pytest.raises(DenoiserError, match=r"format='other/1'"):
        load_denoiser(_plain_safetensors(tmp_path / "b.safetensors", module,
                                         {"format": "other/1", "arch": "dncnn", "config": config}), device="cpu")
    with pytest.raises(DenoiserError, match="malformed denoiser metadata"):
        load_denoiser(_plain_safetensors(tmp_path / "c.safetensors", module,
                                         {"format": DENOISER_FORMAT, "arch": "dncnn"}), device="cpu")
    with pytest.raises(DenoiserError, match="malformed denoiser metadata"):
        load_denoiser(_plain_safetensors(tmp_path / "d.safetensors", module,
                                         {"format": DENOISER_FORMAT, "arch": "dncnn", "config": "{not json"}),
                      device="cpu")
    with pytest.raises(DenoiserError, match="unknown denoiser architecture ''"):
        load_denoiser(_plain_safetensors(tmp_path / "e.safetensors", module,
                                         {"format": DENOISER_FORMAT, "config": config}), device="cpu")
    # the same file with complete metadata loads, so the failures above are about the metadata
    good = {"format": DENOISER_FORMAT, "arch": "dncnn", "config": config, "noise_sd": "0.25"}
    assert load_denoiser(_plain_safetensors(tmp_path / "f.safetensors", module, good), device="cpu").noise_sd == 0.25


def test_safetensors_whose_weights_do_not_fit_the_config(tmp_path):
    module = _small_dncnn(width=8)
    meta = {"format": DENOISER_FORMAT, "arch": "dncnn", "config": json.dumps(dict(module.config(), channels=16)),
            "noise_sd": "null"}
    with pytest.raises(DenoiserError, match="shape"):
        load_denoiser(_plain_safetensors(tmp_path / "w.safetensors", module, meta), device="cpu")


# ----------------------------------------------------------------------------------------------
# 4. save_denoiser / load_denoiser round trip


def test_round_trip_dncnn(tmp_path):
    module = _randomise_last_conv(_small_dncnn(channels=1, depth=4, width=8)).eval()
    path = save_denoiser(module, tmp_path / "sub" / "d.safetensors", noise_sd=0.25,
                         extra_metadata={"dataset": "blobs", "psnr": 30.5})
    assert path.is_file()
    loaded = load_denoiser(path, device="cpu")
    assert isinstance(loaded, DnCNN) and not loaded.training
    assert loaded.noise_sd == 0.25 and loaded.config() == module.config()
    assert loaded.metadata["dataset"] == "blobs" and loaded.metadata["psnr"] == "30.5"
    assert loaded.metadata["format"] == DENOISER_FORMAT
    x = _rand(3, 1, 13, 17)
    with torch.no_grad():
        assert torch.equal(loaded(x), module(x))
    assert ModuleDenoiser(loaded, device="cpu").digest == ModuleDenoiser(module, device="cpu").digest
    # the same σ is accepted, another one refused
    assert load_denoiser(path, device="cpu", noise_sd=0.25).noise_sd == 0.25
    with pytest.raises(DenoiserError, match=r"trained for noise_sd=0\.25, not 0\.5"):
        load_denoiser(path, device="cpu", noise_sd=0.5)
    # the top-level alias is the same loader
    assert robust_api.load_denoiser(path, device="cpu").config() == module.config()


def test_round_trip_drunet_and_memnet(tmp_path):
    torch.manual_seed(0)
    drunet = DRUNet(image_channels=3, widths=(4, 8, 8, 16), blocks=1).eval()
    drunet.noise_sd = 0.12
    torch.manual_seed(0)
    memnet = MemNet(image_channels=1, channels=8, num_memory_blocks=2, num_residual_blocks=2).eval()
    for module, sigma, channels in ((drunet, 0.12, 3), (memnet, None, 1)):
        path = save_denoiser(module, tmp_path / f"{module.arch}.safetensors", noise_sd=sigma)
        loaded = load_denoiser(path, device="cpu")
        assert type(loaded) is type(module) and loaded.config() == module.config() and loaded.noise_sd == sigma
        x = _rand(2, channels, 13, 17)
        with torch.no_grad():
            assert torch.equal(loaded(x), module(x))
    # a file without σ takes the one given at load time
    assert load_denoiser(tmp_path / "memnet.safetensors", device="cpu", noise_sd=0.5).noise_sd == 0.5
    with pytest.raises(DenoiserError, match="trained for noise_sd=0.12"):
        load_denoiser(tmp_path / "drunet.safetensors", device="cpu", noise_sd=0.25)


def test_save_denoiser_refuses_foreign_modules(tmp_path):
    with pytest.raises(DenoiserError, match="DenoiserModule"):
        save_denoiser(torch.nn.Conv2d(1, 1, 3), tmp_path / "x.safetensors", noise_sd=0.25)
    assert not (tmp_path / "x.safetensors").exists()


# ----------------------------------------------------------------------------------------------
# 5. training


def _fixed_noisy_loss(model, clean, noise_sd, seed=123):
    noisy = add_noise(clean, noise_sd, torch.Generator().manual_seed(seed))
    model.eval()
    with torch.no_grad():
        return float(F.mse_loss(model(noisy), clean))


def test_mse_training_reduces_the_loss():
    images = _smooth_blobs(256, 16, seed=0)
    val = _smooth_blobs(32, 16, seed=1)
    model = _small_dncnn(channels=1, depth=4, width=16)
    before_loss = _fixed_noisy_loss(model, val, 0.25)
    before_psnr = psnr(model, val, 0.25)
    history = train_denoiser(model, images, noise_sd=0.25, epochs=4, batch_size=32, lr=5e-3, seed=0,
                             device="cpu", val_images=val)
    assert [s.epoch for s in history] == [1, 2, 3, 4]
    assert all(math.isfinite(s.loss) and s.val_psnr is not None for s in history)
    assert history[-1].loss < 0.5 * history[0].loss
    assert _fixed_noisy_loss(model, val, 0.25) < 0.7 * before_loss
    assert psnr(model, val, 0.25) > before_psnr + 2.0
    assert history[-1].val_psnr == pytest.approx(psnr(model, val, 0.25, seed=0), abs=1e-4)
    assert history[-1].lr < 5e-3 * 0.05  # the cosine schedule ends near zero
    assert not model.training


def _surrogate(seed=0):
    """A small, confident classifier of 1x16x16 images (4 classes)."""
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(256, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    with torch.no_grad():
        net[-1].weight.mul_(20.0)
        net[-1].bias.mul_(20.0)
    return net


def _stability_loss(model, classifier, clean, noise_sd, seed=123):
    noisy = add_noise(clean, noise_sd, torch.Generator().manual_seed(seed))
    model.eval()
    with torch.no_grad():
        target = classifier(clean).argmax(1)
        return float(F.cross_entropy(classifier(model(noisy)), target))


def test_stability_training_reduces_its_loss():
    images = _smooth_blobs(256, 16, seed=0)
    classifier = _surrogate()
    assert len(set(classifier(images).argmax(1).tolist())) >= 2  # not a constant classifier
    frozen = {k: v.clone() for k, v in classifier.state_dict().items()}
    model = _small_dncnn(channels=1, depth=4, width=16)
    before = _stability_loss(model, classifier, images[:64], 0.5)
    history = train_denoiser(model, images, noise_sd=0.5, objective="stability", classifiers=[classifier],
                             epochs=4, batch_size=32, lr=5e-3, seed=0, device="cpu")
    assert len(history) == 4 and all(math.isfinite(s.loss) for s in history)
    assert history[-1].loss < 0.85 * history[0].loss
    assert _stability_loss(model, classifier, images[:64], 0.5) < 0.85 * before
    # the surrogate stayed frozen
    assert all(torch.equal(v, frozen[k]) for k, v in classifier.state_dict().items())
    assert not any(p.requires_grad for p in classifier.parameters())


def test_stability_with_several_surrogates_averages_their_losses():
    images = _smooth_blobs(256, 16, seed=0)
    surrogates = [_surrogate(seed=0), _surrogate(seed=1)]
    model = _small_dncnn(channels=1, depth=4, width=16)
    before = [_stability_loss(model, clf, images[:64], 0.5) for clf in surrogates]
    history = train_denoiser(model, images, noise_sd=0.5, objective="stability", classifiers=surrogates,
                             epochs=4, batch_size=32, lr=5e-3, seed=0, device="cpu")
    after = [_stability_loss(model, clf, images[:64], 0.5) for clf in surrogates]
    assert history[-1].loss < history[0].loss
    # the objective is their mean, and it went down
    assert sum(after) < 0.95 * sum(before)


def test_training_argument_errors():
    model = _small_dncnn()
    images = _smooth_blobs(8, 8)
    with pytest.raises(InvalidParameterError, match="classifier"):
        train_denoiser(model, images, noise_sd=0.25, objective="stability", device="cpu")
    with pytest.raises(InvalidParameterError, match="objective"):
        train_denoiser(model, images, noise_sd=0.25, objective="l1", device="cpu")
    with pytest.raises(InvalidParameterError):
        train_denoiser(model, images, noise_sd=0.25, epochs=0, device="cpu")
    with pytest.raises(InvalidParameterError, match="patch_size"):
        train_denoiser(model, list(images), noise_sd=0.25, device="cpu")
    with pytest.raises(InvalidParameterError):
        train_denoiser(model, images, noise_sd=0.0, device="cpu")


class Interrupt(Exception):
    pass


def test_resume_after_interruption_matches_an_uninterrupted_run(tmp_path):
    images = _smooth_blobs(64, 8, seed=2)
    kwargs = dict(noise_sd=0.25, epochs=2, batch_size=16, lr=3e-3, seed=7, device="cpu")

    straight = _small_dncnn(seed=3, depth=3, width=8)
    train_denoiser(straight, images, checkpoint=tmp_path / "straight.ckpt", **kwargs)

    def stop_in_epoch_two(epoch, step, steps, loss):
        if epoch == 2 and step == 2:
            raise Interrupt

    checkpoint = tmp_path / "resumed.ckpt"
    crashed = _small_dncnn(seed=3, depth=3, width=8)
    with pytest.raises(Interrupt):
        train_denoiser(crashed, images, checkpoint=checkpoint, progress=stop_in_epoch_two, **kwargs)
    assert checkpoint.is_file()
    assert not torch.equal(crashed.dncnn[-1].weight, straight.dncnn[-1].weight)  # it really stopped early

    resumed = _small_dncnn(seed=3, depth=3, width=8)  # a fresh process: new model, same arguments
    steps = []
    history = train_denoiser(resumed, images, checkpoint=checkpoint, progress=lambda *a: steps.append(a[:2]), **kwargs)
    assert [s.epoch for s in history] == [2] and steps == [(2, 1), (2, 2), (2, 3), (2, 4)]
    expected, got = straight.state_dict(), resumed.state_dict()
    assert set(expected) == set(got)
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=0, atol=0, msg=key)

    # a finished checkpoint: nothing more to do; other arguments: refused
    assert train_denoiser(resumed, images, checkpoint=checkpoint, **kwargs) == []
    with pytest.raises(DenoiserError, match="delete it or rerun with the same arguments"):
        train_denoiser(resumed, images, checkpoint=checkpoint, **dict(kwargs, lr=1e-3))


def test_patch_mode_trains_on_crops_of_different_sizes():
    gen = torch.Generator().manual_seed(0)
    photos = [torch.rand(1, 12, 10, generator=gen), torch.rand(1, 9, 16, generator=gen),
              torch.rand(1, 20, 20, generator=gen)]
    model = _small_dncnn(depth=3, width=8)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    seen = []
    history = train_denoiser(model, photos, noise_sd=0.25, patch_size=8, patches_per_epoch=64, batch_size=16,
                             epochs=2, lr=1e-3, seed=0, device="cpu", progress=lambda *a: seen.append(a))
    assert len(history) == 2 and all(math.isfinite(s.loss) for s in history)
    assert len(seen) == 2 * 4 and all(steps == 4 for _, _, steps, _ in seen)
    assert any(not torch.equal(v, before[k]) for k, v in model.state_dict().items())


# ----------------------------------------------------------------------------------------------
# 6. RobustAPI with denoisers


def test_local_provider_with_a_denoiser_file(tmp_path):
    module = _randomise_last_conv(_small_dncnn(channels=1, depth=3, width=8), scale=0.05)
    path = save_denoiser(module, tmp_path / "gray.safetensors", noise_sd=0.25)
    image = np.clip(_smooth_blobs(1, 28, seed=4)[0].permute(1, 2, 0).numpy(), 0, 1)
    api = RobustAPI("local", denoiser=path, log=False, seed=0, device="cpu")
    cert = api.certify(image, noise_sd=0.25, N0=5, N=10)
    assert cert.queries == 15 and len(cert.logs) == 15
    header = cert.logs.header
    assert header.denoiser_id == "module:robust_api.denoisers.dncnn.DnCNN"
    assert header.denoiser_digest == ModuleDenoiser(load_denoiser(path, device="cpu"), device="cpu").digest
    assert len(header.denoiser_digest) == 64
    # other weights, other digest
    other = save_denoiser(_small_dncnn(channels=1, depth=3, width=8), tmp_path / "other.safetensors", noise_sd=0.25)
    cert2 = RobustAPI("local", denoiser=os.fspath(other), log=False, seed=0, device="cpu").certify(
        image, noise_sd=0.25, N0=5, N=10)
    assert cert2.logs.header.denoiser_digest != header.denoiser_digest


def test_unknown_denoiser_name_fails_at_construction():
    with pytest.raises(DenoiserError, match="no shipped denoiser or file"):
        RobustAPI(Counting(), denoiser="no-such-denoiser", log=False)


def test_channel_mismatch_is_refused_before_any_query():
    provider = Counting()
    api = RobustAPI(provider, denoiser=_small_dncnn(channels=3), log=False, seed=0, device="cpu")
    gray = np.full((8, 8, 1), 0.2, np.float32)
    with pytest.raises(DenoiserError, match="3-channel images but the image has 1 channels"):
        api.certify(gray, noise_sd=0.25, N0=5, N=10)
    with pytest.raises(DenoiserError, match="3-channel"):
        api.predict(gray, N=10, noise_sd=0.25)
    assert provider.calls == 0 and provider.images == 0
    # the same API works on an RGB image, so the refusal above was about the channels
    cert = api.certify(np.full((8, 8, 3), 0.2, np.float32), noise_sd=0.25, N0=5, N=10)
    assert cert.queries == 15 and provider.images == 15


def test_module_denoiser_chunks_match_one_pass(monkeypatch):
    module = _randomise_last_conv(_small_dncnn(channels=1, depth=3, width=8), scale=0.3).eval()
    images = _rand(10, 8, 8, 1, seed=9).numpy()
    one_pass = ModuleDenoiser(module, device="cpu")(images)
    per_image = 8 * 8 * module.activation_channels * 4 * 4
    monkeypatch.setattr(torch_utils, "CPU_ACTIVATION_BYTES", 3 * per_image + 1)
    assert denoiser_chunk_size(module, images.shape[1:], CPU) == 3
    sizes = []
    handle = module.register_forward_hook(lambda mod, inputs, output: sizes.append(inputs[0].shape[0]))
    try:
        chunked = ModuleDenoiser(module, device="cpu")(images)
    finally:
        handle.remove()
    assert sizes == [3, 3, 3, 1]
    assert chunked.shape == one_pass.shape == (10, 8, 8, 1)
    np.testing.assert_allclose(chunked, one_pass, rtol=1e-6, atol=1e-6)
    monkeypatch.setattr(torch_utils, "CPU_ACTIVATION_BYTES", 1)
    assert denoiser_chunk_size(module, images.shape[1:], CPU) == 1


def _mean_label(batch):
    return ["A" if float(x.mean()) < 0.5 else "B" for x in batch]


def test_denoiser_used_at_another_noise_level_warns_but_certifies(recwarn):
    module = _small_dncnn(channels=3)
    module.noise_sd = 0.25
    image = np.full((8, 8, 3), 0.2, np.float32)
    api = RobustAPI(_mean_label, denoiser=module, log=False, seed=0, device="cpu")
    matching = api.certify(image, noise_sd=0.25, N0=5, N=20)
    assert not [w for w in recwarn if issubclass(w.category, robust_api.DenoiserNoiseLevelWarning)]
    cert = api.certify(image, noise_sd=0.5, N0=5, N=20)
    warned = [w for w in recwarn if issubclass(w.category, robust_api.DenoiserNoiseLevelWarning)]
    assert len(warned) == 1
    assert "noise_sd=0.25" in str(warned[0].message) and "noise_sd=0.5" in str(warned[0].message)
    assert cert.queries == 25 and cert.label == "A" and cert.radius > 0 and matching.label == "A"


# ----------------------------------------------------------------------------------------------
# 7. shipped denoisers


def test_available_is_a_sorted_list_of_loadable_names():
    names = available()
    assert isinstance(names, list) and names == sorted(names)
    assert all(isinstance(n, str) and n and not n.endswith(".safetensors") for n in names)
    assert "nl-means" not in names
    for name in names:  # (empty until weights are shipped)
        module = load_denoiser(name, device="cpu")
        if module.noise_sd is None:  # σ-conditioned: RobustAPI sets each call's σ
            with pytest.raises(DenoiserError, match="needs σ"):
                module(_rand(1, module.image_channels, 32, 32))
            module.set_noise_sd(0.25)
        size = 28 if module.image_channels == 1 else 32
        x = _rand(1, module.image_channels, size, size)
        with torch.no_grad():
            out = module(x)
        assert out.shape == x.shape and torch.isfinite(out).all()
        assert module.metadata["name"] == name
        assert ModuleDenoiser(module, device="cpu").identity == f"denoiser:{name}"


def test_shipped_files_carry_format_and_noise_level():
    from safetensors import safe_open

    from robust_api.denoisers.loading import shipped_root

    root = shipped_root()
    files = sorted(root.glob("*.safetensors")) if root.is_dir() else []
    assert [f.name[: -len(".safetensors")] for f in files] == available()
    for path in files:
        with safe_open(os.fspath(path), framework="pt") as handle:
            metadata = handle.metadata()
        assert metadata["format"] == DENOISER_FORMAT, path.name
        sigma, config = json.loads(metadata["noise_sd"]), json.loads(metadata["config"])
        assert isinstance(config, dict) and metadata["arch"], path.name
        if sigma is None:  # one network for a range of σ
            low, high = config["noise_sd_range"]
            assert 0 <= low < high <= 1, path.name
        else:
            assert isinstance(sigma, float) and 0 < sigma <= 1, path.name


# ----------------------------------------------------------------------------------------------
# Malformed files and arguments that once escaped as unrelated built-in exceptions.


@pytest.mark.parametrize("config", ["[1]", '"dncnn"', "null"])
def test_config_metadata_that_is_not_an_object_raises_denoiser_error(tmp_path, config):
    meta = {"format": DENOISER_FORMAT, "arch": "dncnn", "config": config, "noise_sd": "0.25"}
    with pytest.raises(DenoiserError):
        load_denoiser(_plain_safetensors(tmp_path / "c.safetensors", _small_dncnn(), meta), device="cpu")


@pytest.mark.parametrize("noise_sd", ['"abc"', "-1", "5", "true"])
def test_bad_noise_sd_metadata_raises_denoiser_error(tmp_path, noise_sd):
    module = _small_dncnn()
    meta = {"format": DENOISER_FORMAT, "arch": "dncnn", "config": json.dumps(module.config()), "noise_sd": noise_sd}
    with pytest.raises(DenoiserError):
        load_denoiser(_plain_safetensors(tmp_path / "n.safetensors", module, meta), device="cpu")


def test_non_tensor_state_dict_value_raises_denoiser_error(tmp_path, memnet_state):
    state = collections.OrderedDict(memnet_state)
    state["feature_extractor.bn.weight"] = 1.0
    with pytest.raises(DenoiserError):
        load_denoiser(_ckpt(tmp_path, {"arch": "memnet", "state_dict": state}), device="cpu")


def test_patch_larger_than_an_image_raises_invalid_parameter():
    photos = [torch.rand(1, 9, 20), torch.rand(1, 20, 20)]
    with pytest.raises(InvalidParameterError):
        train_denoiser(_small_dncnn(), photos, noise_sd=0.25, patch_size=16, patches_per_epoch=8, epochs=1,
                       device="cpu")


def test_nl_means_accepts_gray_images_through_the_api():
    provider = Counting()
    denoiser = load_denoiser("nl-means", noise_sd=0.25, device="cpu")
    api = robust_api.RobustAPI(provider, denoiser=denoiser, log=False, seed=0)
    cert = api.certify(np.full((8, 8, 1), 0.2, np.float32), noise_sd=0.25, N0=2, N=4)
    assert cert.n == 4 and provider.calls > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_mixed_precision_matches_fp32_cpu():
    torch.manual_seed(0)
    module = DnCNN(3, depth=5, channels=16)
    torch.nn.init.normal_(module.dncnn[-1].weight, std=0.01)
    images = np.random.default_rng(0).random((6, 32, 32, 3), dtype=np.float32)
    reference = ModuleDenoiser(module, device="cpu")(images)
    fast = ModuleDenoiser(module, device="cuda")
    assert fast.autocast_dtype in (torch.bfloat16, torch.float16)
    np.testing.assert_allclose(fast(images), reference, atol=5e-2)


def test_denoiser_runs_in_blocks_larger_than_the_provider_batch():
    """A one-image-per-request provider still gets its noisy copies denoised in one pass per phase."""
    batch_sizes = []

    def denoiser(images):
        batch_sizes.append(len(images))
        return images

    sent = []

    def provider(images):
        sent.append(len(images))
        return ["dark" if float(x.mean()) < 0.5 else "light" for x in images]

    api = RobustAPI(provider, denoiser=denoiser, log=False, seed=0, batch_size=1)
    cert = api.certify(np.full((8, 8, 1), 0.2, np.float32), noise_sd=0.25, N0=7, N=30)
    assert batch_sizes == [7, 30]
    assert sent == [1] * 37 and cert.n == 30 and sum(cert.counts.values()) == 30
    reference = RobustAPI(provider, log=False, seed=0, batch_size=8).certify(
        np.full((8, 8, 1), 0.2, np.float32), noise_sd=0.25, N0=7, N=30)
    assert reference.counts == cert.counts and reference.selection_counts == cert.selection_counts


@pytest.mark.parametrize("noise_sd", ["0.25", -0.1, 0.0, 2.0, float("nan")])
def test_load_denoiser_rejects_a_bad_noise_sd_argument(noise_sd):
    with pytest.raises(InvalidParameterError, match="noise_sd"):
        load_denoiser("nl-means", noise_sd=noise_sd, device="cpu")
