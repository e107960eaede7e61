"""Bad inputs get typed errors with actionable messages, and cost nothing.

For every invalid image or parameter: the right exception class (a ``ValueError`` where
the error tree says so), a message that tells the user how to fix it, zero images sent to
the provider and no call opened in the log. For misbehaving providers: the failed batch is
logged as error records (never votes), earlier batches survive, and a re-run resumes.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
from pathlib import Path

import numpy as np
import pytest

import robust_api
from robust_api import (
    DenoiserError,
    InvalidImageError,
    InvalidInputError,
    InvalidParameterError,
    LogIntegrityError,
    LogMismatchError,
    NotAQueryLogError,
    OfflineModeError,
    ProviderError,
    ProviderResponseError,
    RobustAPI,
    RobustAPIError,
    UnknownProviderError,
    open_log,
)

# -- test doubles ----------------------------------------------------------------------------


from doubles import Counting  # noqa: E402


class Flaky(Counting):
    """Answers correctly except on call number ``bad_call``, where it misbehaves as ``mode`` says."""

    def __init__(self, mode: str, bad_call: int = 3):
        super().__init__()
        self.mode = mode
        self.bad_call = bad_call

    def __call__(self, batch):
        labels = super().__call__(batch)
        if self.calls != self.bad_call:
            return labels
        if self.mode == "fewer":
            return labels[:-1]
        if self.mode == "more":
            return labels + ["A"]
        if self.mode == "single_string":
            return "A"
        if self.mode == "none_response":
            return None
        if self.mode == "int_labels":
            return [0] * len(batch)
        if self.mode == "none_labels":
            return [None] * len(batch)
        if self.mode == "raises":
            raise ConnectionError("service unavailable")
        raise AssertionError(self.mode)


# gray 8x8 image: x[0, 0, 0] = 0.3, so the half-space answers "A" with probability Phi(0.8) under sigma=0.25
IMAGE = np.full((8, 8), 0.3, dtype=np.float32)
SIGMA = 0.25


@pytest.fixture
def counting():
    return Counting()


@pytest.fixture
def api(counting):
    return RobustAPI(counting, log=False, seed=0)


def assert_rejected(excinfo, cls, phrases, provider, api=None):
    """The error is exactly ``cls``, a ValueError, mentions every phrase, and nothing was sent."""
    err = excinfo.value
    assert type(err) is cls, f"expected {cls.__name__}, got {type(err).__name__}: {err}"
    assert isinstance(err, RobustAPIError)
    if issubclass(cls, InvalidInputError):
        assert isinstance(err, ValueError)
    message = str(err)
    for phrase in [phrases] if isinstance(phrases, str) else phrases:
        assert phrase in message, f"{phrase!r} not in {message!r}"
    assert provider.calls == 0 and provider.images == 0, "a rejected input must not reach the provider"
    if api is not None:
        assert len(api.log) == 0, "a rejected input must not open a call in the log"


# -- images ----------------------------------------------------------------------------------


def _torch_tensor():
    torch = pytest.importorskip("torch")
    return torch.zeros(8, 8, 3)


BAD_IMAGES = {
    "list": ([[0.1, 0.2], [0.3, 0.4]], ["expected a NumPy array, a PIL image or a path", "list"]),
    "dict": ({"pixels": [0.1]}, ["expected a NumPy array, a PIL image or a path", "dict"]),
    "none": (None, "expected a NumPy array"),
    "bytes": (b"\x89PNG", ["cannot decode the 4 image bytes", "PNG, JPEG"]),
    "scalar_0d": (np.asarray(0.5, dtype=np.float32), "must be [H, W] or [H, W, C]"),
    "1d": (np.zeros(8, np.float32), ["must be [H, W] or [H, W, C]", "(8,)"]),
    "4d_batch": (np.zeros((2, 8, 8, 1), np.float32), ["4-D", "one image [H, W, C] at a time"]),
    "5d": (np.zeros((1, 2, 8, 8, 1), np.float32), "must be [H, W] or [H, W, C]"),
    "2_channels": (np.zeros((8, 8, 2), np.float32), ["1 or 3 channels", "got 2"]),
    "4_channels": (np.zeros((8, 8, 4), np.float32), ["4 channels", "img[..., :3]"]),
    "5_channels": (np.zeros((8, 8, 5), np.float32), "1 or 3 channels"),
    "channels_first_rgba": (np.zeros((4, 8, 8), np.float32), ["channels-first", "4 channels", "img[:3]"]),
    "channels_first_2": (np.zeros((2, 8, 9), np.float32), ["1 or 3 channels", "[C, H, W]"]),
    "empty_0xN": (np.zeros((0, 8), np.float32), "empty"),
    "empty_Nx0": (np.zeros((8, 0), np.uint8), "empty"),
    "empty_rgb": (np.zeros((0, 8, 3), np.float32), "empty"),
    "nan": (np.where(np.eye(8, dtype=bool), np.nan, 0.5).astype(np.float32), "NaN or infinite"),
    "nan_float16": (np.full((8, 8), np.nan, np.float16), "NaN or infinite"),
    "inf": (np.full((8, 8), np.inf, np.float64), "NaN or infinite"),
    "neg_inf": (np.full((8, 8), -np.inf, np.float32), "NaN or infinite"),
    "float_0_255": (np.linspace(0, 255, 64, dtype=np.float32).reshape(8, 8), ["[0, 1]", "divide by 255"]),
    "float64_0_255_rgb": (np.full((8, 8, 3), 128.0), "divide by 255"),
    "negative_floats": (np.full((8, 8), -0.2, np.float32), ["must lie in [0, 1]", "-0.2"]),
    "float_above_255": (np.full((8, 8), 1000.0, np.float32), "must lie in [0, 1]"),
    "int64": (np.zeros((8, 8), np.int64), ["unsupported dtype int64", "uint8"]),
    "int32": (np.zeros((8, 8), np.int32), "unsupported dtype int32"),
    "int8": (np.zeros((8, 8), np.int8), "unsupported dtype int8"),
    "bool": (np.zeros((8, 8), bool), ["unsupported dtype bool", "uint8"]),
    "complex": (np.zeros((8, 8), np.complex64), ["unsupported dtype complex64", "float in [0, 1]"]),
    "object": (np.empty((8, 8), dtype=object), "unsupported dtype object"),
}


@pytest.mark.parametrize("name", sorted(BAD_IMAGES))
@pytest.mark.parametrize("method", ["certify", "predict"])
def test_bad_image_array_rejected_before_any_query(name, method, api, counting):
    image, phrases = BAD_IMAGES[name]
    with pytest.raises(InvalidImageError) as excinfo:
        getattr(api, method)(image, noise_sd=SIGMA)
    assert_rejected(excinfo, InvalidImageError, phrases, counting, api)


def test_bad_float_hint_only_when_values_look_like_0_255(api, counting):
    """A float image slightly out of range must not be told to divide by 255."""
    image = np.full((8, 8), 1.5, np.float32)
    image[0, 0] = -0.5
    with pytest.raises(InvalidImageError) as excinfo:
        api.certify(image, noise_sd=SIGMA)
    assert_rejected(excinfo, InvalidImageError, "must lie in [0, 1]", counting, api)
    assert "divide by 255" not in str(excinfo.value)


def test_bad_torch_tensor_rejected_with_the_fix(api, counting):
    """Tensors are images ([C, H, W] or [H, W, C]); a batch of several is refused before any query."""
    tensor = _torch_tensor()
    with pytest.raises(InvalidImageError) as excinfo:
        api.certify(tensor[None].expand(2, 8, 8, 3), noise_sd=SIGMA)
    assert_rejected(excinfo, InvalidImageError, ["4-D tensor", "one image [H, W, C] at a time"], counting, api)


def test_unsupported_pil_mode_rejected(api, counting):
    from PIL import Image

    with pytest.raises(InvalidImageError) as excinfo:
        api.certify(Image.new("F", (8, 8)), noise_sd=SIGMA)
    assert_rejected(excinfo, InvalidImageError, ["unsupported PIL image mode 'F'", "convert"], counting, api)


def _png_bytes(tmp_path: Path) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(0)
    path = tmp_path / "noise.png"
    Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8), mode="L").save(path)
    return path.read_bytes()


@pytest.mark.parametrize(
    "kind, phrases",
    [
        ("missing", ["image file not found", "nope.png"]),
        ("missing_pathlike", "image file not found"),
        ("directory", "is a directory, not an image file"),
        ("text_with_png_suffix", ["cannot read", "as an image", "PNG, JPEG"]),
        ("empty_png", ["cannot read", "as an image"]),
        ("truncated_png", ["cannot read", "as an image"]),
    ],
)
@pytest.mark.parametrize("method", ["certify", "predict"])
def test_bad_image_paths_rejected(kind, phrases, method, tmp_path, api, counting):
    if kind == "missing":
        image = str(tmp_path / "nope.png")
    elif kind == "missing_pathlike":
        image = tmp_path / "also" / "nope.png"
    elif kind == "directory":
        (tmp_path / "folder.png").mkdir()
        image = str(tmp_path / "folder.png")
    elif kind == "text_with_png_suffix":
        image = tmp_path / "notes.png"
        image.write_text("this is not an image\n")
    elif kind == "empty_png":
        image = tmp_path / "empty.png"
        image.write_bytes(b"")
    else:
        data = _png_bytes(tmp_path)
        assert len(data) > 400  # noise does not compress: the pixel data is most of the file
        image = tmp_path / "truncated.png"
        image.write_bytes(data[: len(data) // 2])
    with pytest.raises(InvalidImageError) as excinfo:
        getattr(api, method)(image, noise_sd=SIGMA)
    assert_rejected(excinfo, InvalidImageError, phrases, counting, api)


def test_good_png_path_is_accepted(tmp_path, api, counting):
    """Control for the path tests: the untruncated PNG goes through."""
    path = tmp_path / "good.png"
    path.write_bytes(_png_bytes(tmp_path))
    cert = api.certify(path, noise_sd=SIGMA, N0=2, N=3)
    assert cert.n0 == 2 and cert.n == 3
    assert counting.images == 5


# -- parameters ------------------------------------------------------------------------------

NOISE_CERTIFY = [
    (0, "> 0 to certify"),
    (0.0, "> 0 to certify"),
    (-0.1, "> 0 to certify"),
    (float("nan"), "must be a finite number"),
    (float("inf"), "must be a finite number"),
    (-float("inf"), "must be a finite number"),
    ("0.25", "must be a finite number"),
    (True, "must be a finite number"),
    (None, "noise_sd is required"),
    (1.5, ["must be <= 1", "divide by 255"]),
    (25.0, ["must be <= 1", "divide by 255"]),
]


@pytest.mark.parametrize("noise_sd, phrases", NOISE_CERTIFY, ids=repr)
def test_certify_bad_noise_sd(noise_sd, phrases, api, counting):
    with pytest.raises(InvalidParameterError) as excinfo:
        api.certify(IMAGE, noise_sd=noise_sd, N0=2, N=3)
    assert_rejected(excinfo, InvalidParameterError, ["noise_sd"] + ([phrases] if isinstance(phrases, str) else phrases), counting, api)


NOISE_PREDICT = [
    (-0.1, ">= 0"),
    (-1e-9, ">= 0"),
    (float("nan"), "must be a finite number"),
    (float("inf"), "must be a finite number"),
    ("0.25", "must be a finite number"),
    (None, "noise_sd is required"),
    (1.0001, ["must be <= 1", "divide by 255"]),
]


@pytest.mark.parametrize("noise_sd, phrases", NOISE_PREDICT, ids=repr)
def test_predict_bad_noise_sd(noise_sd, phrases, api, counting):
    with pytest.raises(InvalidParameterError) as excinfo:
        api.predict(IMAGE, N=3, noise_sd=noise_sd)
    assert_rejected(excinfo, InvalidParameterError, ["noise_sd"] + ([phrases] if isinstance(phrases, str) else phrases), counting, api)


def test_predict_noise_sd_zero_is_allowed(api, counting):
    """Control: predict accepts noise_sd=0 (clean queries), certify does not."""
    pred = api.predict(IMAGE, N=1, noise_sd=0)
    assert pred.label == "A" and counting.images == 1


BAD_ALPHAS = [
    (0, "open interval (0, 1)"),
    (0.0, "open interval (0, 1)"),
    (1, "open interval (0, 1)"),
    (-0.1, "open interval (0, 1)"),
    (1.5, "open interval (0, 1)"),
    (float("nan"), "alpha must be a float in (0, 1)"),
    (float("inf"), "alpha must be a float in (0, 1)"),
    ("0.01", "alpha must be a float in (0, 1)"),
    (True, "alpha must be a float in (0, 1)"),
]


@pytest.mark.parametrize("alpha, phrase", BAD_ALPHAS, ids=repr)
@pytest.mark.parametrize("method", ["certify", "predict"])
def test_bad_alpha(alpha, phrase, method, api, counting):
    with pytest.raises(InvalidParameterError) as excinfo:
        if method == "certify":
            api.certify(IMAGE, noise_sd=SIGMA, N0=2, N=3, alpha=alpha)
        else:
            api.predict(IMAGE, N=3, noise_sd=SIGMA, alpha=alpha)
    assert_rejected(excinfo, InvalidParameterError, phrase, counting, api)


def test_alpha_none_means_the_default_online_and_the_logged_alpha_offline(api):
    cert = api.certify(IMAGE, noise_sd=SIGMA, N0=2, N=3, alpha=None)
    assert cert.alpha == 0.001
    logged = api.certify(IMAGE, noise_sd=SIGMA, N0=2, N=3, alpha=0.2)
    offline = RobustAPI("x", online=False)
    assert offline.certify(logged.logs).alpha == 0.2
    assert offline.certify(logged.logs, alpha=0.05).alpha == 0.05


BAD_COUNTS = [
    (0, ">= 1, got 0"),
    (-1, ">= 1, got -1"),
    (1.5, "must be a positive integer"),
    (100.0, "must be a positive integer"),
    ("100", "must be a positive integer"),
    (True, "must be a positive integer"),
    (False, "must be a positive integer"),
]


@pytest.mark.parametrize("value, phrase", BAD_COUNTS, ids=repr)
@pytest.mark.parametrize("name", ["N", "N0"])
def test_certify_bad_sample_counts(name, value, phrase, api, counting):
    kwargs = {"N0": 2, "N": 3, name: value}
    with pytest.raises(InvalidParameterError) as excinfo:
        api.certify(IMAGE, noise_sd=SIGMA, **kwargs)
    assert_rejected(excinfo, InvalidParameterError, [name, phrase], counting, api)


@pytest.mark.parametrize("value, phrase", BAD_COUNTS, ids=repr)
def test_predict_bad_N(value, phrase, api, counting):
    with pytest.raises(InvalidParameterError) as excinfo:
        api.predict(IMAGE, N=value, noise_sd=SIGMA)
    assert_rejected(excinfo, InvalidParameterError, ["N", phrase], counting, api)


def test_numpy_integer_counts_are_accepted(api, counting):
    cert = api.certify(IMAGE, noise_sd=SIGMA, N0=np.int64(2), N=np.int32(3))
    assert (cert.n0, cert.n) == (2, 3) and counting.images == 5


BAD_SEEDS = [-1, 1.5, 2.0, 2**63, 2**64, "7", True]


@pytest.mark.parametrize("seed", BAD_SEEDS, ids=repr)
def test_bad_seed_in_constructor(seed, counting):
    with pytest.raises(InvalidParameterError) as excinfo:
        RobustAPI(counting, log=False, seed=seed)
    assert_rejected(excinfo, InvalidParameterError, "seed must be an integer in [0, 2**63 - 1]", counting)


@pytest.mark.parametrize("seed", BAD_SEEDS, ids=repr)
@pytest.mark.parametrize("method", ["certify", "predict"])
def test_bad_seed_per_call(seed, method, api, counting):
    with pytest.raises(InvalidParameterError) as excinfo:
        if method == "certify":
            api.certify(IMAGE, noise_sd=SIGMA, N0=2, N=3, seed=seed)
        else:
            api.predict(IMAGE, N=3, noise_sd=SIGMA, seed=seed)
    assert_rejected(excinfo, InvalidParameterError, "seed must be an integer in [0, 2**63 - 1]", counting, api)


def test_largest_seed_is_accepted(tmp_path, counting):
    """Control for the seed tests: 2**63 - 1 fits SQLite and is recorded exactly."""
    api = RobustAPI(counting, log=tmp_path / "log.sqlite3", seed=2**63 - 1)
    cert = api.certify(IMAGE, noise_sd=SIGMA, N0=1, N=2)
    assert cert.logs.header.seed == 2**63 - 1
    assert next(iter(open_log(tmp_path / "log.sqlite3"))).header.seed == 2**63 - 1


@pytest.mark.parametrize("batch_size", [0, -3, 2.5, "10", True])
def test_bad_batch_size(batch_size, counting):
    with pytest.raises(InvalidParameterError) as excinfo:
        RobustAPI(counting, log=False, batch_size=batch_size)
    assert_rejected(excinfo, InvalidParameterError, "batch_size", counting)


@pytest.mark.parametrize("provider", [42, None, 3.5])
def test_provider_that_is_not_a_name_provider_or_callable(provider):
    with pytest.raises(InvalidParameterError) as excinfo:
        RobustAPI(provider, log=False)
    assert "provider must be a registered name, a Provider or a callable" in str(excinfo.value)


@pytest.mark.parametrize("label_fn", ["label", 3])
def test_label_fn_must_be_callable(label_fn, counting):
    with pytest.raises(InvalidParameterError) as excinfo:
        RobustAPI(counting, log=False, label_fn=label_fn)
    assert_rejected(excinfo, InvalidParameterError, "label_fn must be a callable", counting)


# -- every argument has a range, checked before a provider, a thread or a log file exists ----

CONSTRUCTOR_OUT_OF_RANGE = [
    ("batch_size", 10**6, "batch_size must be <= 65,536, got 1,000,000"),
    ("batch_size", np.int64(0), "batch_size must be >= 1, got 0"),
    ("concurrency", 0, "concurrency must be >= 1"),
    ("concurrency", 5000, "concurrency must be <= 1,024"),
    ("concurrency", 4.0, "concurrency must be a positive integer"),
    ("rate_limit", 1e-9, "rate_limit must be >= 0.001 requests per second"),
    ("rate_limit", 1e-300, "rate_limit must be >= 0.001 requests per second"),
    ("rate_limit", float("nan"), "rate_limit must be a positive number"),
    ("retry", 101, "retry must be <= 100"),
    ("retry", 10**9, "retry must be <= 100"),
    ("retry", robust_api.RetryPolicy(max_attempts=10**6), "at most 100 attempts per query"),
    ("retry", robust_api.RetryPolicy(initial_backoff_s=1e300, max_backoff_s=1e300),  # time.sleep overflowed
     "RetryPolicy.initial_backoff_s must be <= 3600 seconds"),
    ("retry", robust_api.RetryPolicy(max_retry_after_s=1e9), "RetryPolicy.max_retry_after_s must be <= 3600"),
    ("online", "no", "online must be True or False, got 'no'"),
    ("online", 0, "online must be True or False, got 0"),
    ("online", None, "online must be True or False, got None"),
    ("class_names", "AB", "class_names must be a non-empty list of label strings"),
    ("class_names", [0, 1], "class_names must be a non-empty list of label strings"),
    ("class_names", [], "class_names must be a non-empty list of label strings"),
    pytest.param("device", "bogus", "invalid device 'bogus'", marks=pytest.mark.torch),
    ("max_queries", -1, "max_queries must be >= 0"),
]


@pytest.mark.parametrize("name, value, phrase", CONSTRUCTOR_OUT_OF_RANGE, ids=lambda v: repr(v)[:40])
def test_constructor_argument_out_of_range(name, value, phrase, counting, tmp_path):
    """Each refused with InvalidParameterError naming the argument and its range; no log file
    is created. (``online="no"`` used to mean online, ``rate_limit=1e-300`` overflowed
    time.sleep after the first request, ``retry=10**9`` retried a dead service for days.)"""
    log = tmp_path / "log.sqlite3"
    with pytest.raises(InvalidParameterError) as excinfo:
        RobustAPI(counting, log=log, **{name: value})
    assert_rejected(excinfo, InvalidParameterError, phrase, counting)
    assert not log.exists()


def test_numpy_scalars_are_accepted_where_python_ones_are(counting):
    api = RobustAPI(counting, log=False, retry=np.int64(3), max_queries=np.int32(40), batch_size=np.int16(7),
                    online=np.True_)
    assert api.retry.max_attempts == 3 and api.budget.max_queries == 40 and api.online is True
    assert api.certify(IMAGE, noise_sd=SIGMA, N0=2, N=3).queries == 5


# N = MAX_SAMPLES + 1 and 10**12: the old code accepted both and allocated one list entry per
# sample (10**12: the OOM killer); max_queries=10 makes the old code fail fast with a budget
# error instead, so these tests fail on it without exhausting the machine.
HUGE_COUNTS = [
    ("certify N", lambda api, v: api.certify(IMAGE, noise_sd=SIGMA, N0=2, N=v), "N must be <= 10,000,000"),
    ("certify N0", lambda api, v: api.certify(IMAGE, noise_sd=SIGMA, N0=v, N=3), "N0 must be <= 10,000,000"),
    ("sequential N", lambda api, v: api.certify(IMAGE, noise_sd=SIGMA, N=v, method="sequential"),
     "N must be <= 10,000,000"),
    ("predict N", lambda api, v: api.predict(IMAGE, noise_sd=SIGMA, N=v), "N must be <= 10,000,000"),
    ("certify_many N", lambda api, v: api.certify_many([IMAGE], noise_sd=SIGMA, N0=2, N=v), "N must be <= 10,000,000"),
    ("certify_batch N", lambda api, v: api.certify_batch([IMAGE], noise_sd=SIGMA, total_queries=100, N=v),
     "N must be <= 10,000,000"),
    ("certify_batch total", lambda api, v: api.certify_batch([IMAGE], noise_sd=SIGMA, total_queries=v * 10**6),
     "total_queries must be <= 1,000,000,000,000"),
    ("certify_many parallel", lambda api, v: api.certify_many([IMAGE], noise_sd=SIGMA, N0=2, N=3, parallel=v),
     "parallel must be <= 1,024"),
]


@pytest.mark.parametrize("value", [10_000_001, 10**12])
@pytest.mark.parametrize("what, call, phrase", HUGE_COUNTS, ids=[w for w, _, _ in HUGE_COUNTS])
def test_absurd_sample_counts_are_refused_before_any_query(what, call, phrase, value, counting, tmp_path):
    api = RobustAPI(counting, log=tmp_path / "log.sqlite3", seed=0, max_queries=10)
    with pytest.raises(InvalidParameterError) as excinfo:
        call(api, value)
    assert_rejected(excinfo, InvalidParameterError, [phrase, "split the work" if "N" in phrase else ""], counting, api)


def test_options_a_provider_does_not_take_are_refused_not_dropped(counting):
    """An option the provider does not take was passed on (TypeError) or silently ignored."""
    cases = [
        (lambda: RobustAPI(counting, log=False, foo=1), "a callable provider does not take foo="),
        (lambda: RobustAPI(counting, log=False, model="m.safetensors"), "a callable provider does not take model="),
        (lambda: RobustAPI(counting, log=False, class_names=["A", "B"]), "does not take class_names="),
        (lambda: RobustAPI(robust_api.CallableProvider(counting), log=False, endpoint="http://x"),
         "a Provider object (CallableProvider) does not take endpoint="),
        (lambda: RobustAPI(robust_api.CallableProvider(counting), log=False, label_fn=str), "does not take label_fn="),
        (lambda: RobustAPI("local", log=False, foo=1), "provider 'local' does not take foo="),
        (lambda: RobustAPI("local", log=False, label_fn=str), "provider 'local' does not take label_fn="),
        (lambda: RobustAPI("http", url="http://127.0.0.1:9/predict", log=False, model="x"),
         "provider 'http' does not take model="),
    ]
    for make, phrase in cases:
        with pytest.raises(InvalidParameterError) as excinfo:
            make()
        assert_rejected(excinfo, InvalidParameterError, phrase, counting)


def test_label_fn_reaches_a_cloud_provider():
    """README: every adapter takes label_fn=; RobustAPI used to drop it for registered names."""
    def choose(labels):
        return labels[-1][0]

    api = RobustAPI("http", url="http://127.0.0.1:9/predict", log=False, label_fn=choose)
    assert api.provider.label_fn is choose


@pytest.mark.parametrize("batch_size", [0, -1, 1.5, "8", True, 10**6])
def test_callable_provider_batch_size_is_checked(batch_size, counting):
    """CallableProvider(fn, batch_size=0) was accepted; RobustAPI then cut requests of 0 images."""
    with pytest.raises(InvalidParameterError, match="batch_size must be"):
        robust_api.CallableProvider(counting, batch_size=batch_size)


class _BadSettings(robust_api.Provider):
    identity = "bad-settings"

    def send(self, images):
        raise AssertionError("never called")

    def parse(self, raw):
        return str(raw)


@pytest.mark.parametrize("attribute, value, phrase", [
    ("max_batch_size", 0, "_BadSettings.max_batch_size must be >= 1"),
    ("max_batch_size", 2.5, "_BadSettings.max_batch_size must be a positive integer"),
    ("default_concurrency", -1, "_BadSettings.default_concurrency must be >= 1"),
    ("default_rate_limit", 0, "_BadSettings.default_rate_limit: rate_limit must be a positive number"),
])
def test_a_provider_objects_own_settings_are_checked(attribute, value, phrase, tmp_path):
    provider = _BadSettings()
    setattr(provider, attribute, value)
    log = tmp_path / "log.sqlite3"
    with pytest.raises(InvalidParameterError, match=phrase.replace(".", r"\.")):
        RobustAPI(provider, log=log)
    assert not log.exists()


# -- providers that misbehave ----------------------------------------------------------------

PROVIDER_FAILURES = [
    ("fewer", ProviderResponseError, ["returned 9 answers for a batch of 10 images", "exactly one label per image"]),
    ("more", ProviderResponseError, ["returned 11 answers for a batch of 10 images", "exactly one label per image"]),
    ("single_string", ProviderResponseError, ["returned str", "must return a list with one answer per image"]),
    ("none_response", ProviderResponseError, ["returned NoneType", "must return a list"]),
    ("int_labels", ProviderResponseError, ["label of type int", "labels must be str", "label_fn="]),
    ("none_labels", ProviderResponseError, ["label of type NoneType", "labels must be str"]),
    ("raises", ProviderError, ["failed", "ConnectionError", "service unavailable"]),
]


@pytest.mark.parametrize("mode, cls, phrases", PROVIDER_FAILURES, ids=[m for m, _, _ in PROVIDER_FAILURES])
def test_provider_failure_is_logged_as_errors_and_resumable(mode, cls, phrases, tmp_path):
    log_path = tmp_path / "log.sqlite3"
    flaky = Flaky(mode, bad_call=3)
    api = RobustAPI(flaky, log=log_path, seed=7, batch_size=10, name="flaky-provider")
    with pytest.raises(cls) as excinfo:
        api.certify(IMAGE, noise_sd=SIGMA, N0=10, N=30)
    err = excinfo.value
    assert type(err) is cls
    assert isinstance(err, ProviderError) and isinstance(err, RuntimeError)
    if cls is ProviderResponseError:
        assert isinstance(err, ValueError)
    for phrase in phrases:
        assert phrase in str(err), f"{phrase!r} not in {str(err)!r}"
    # batches: selection 0-9, estimation 0-9, estimation 10-19 (the bad third call); nothing after it
    assert flaky.calls == 3 and flaky.images == 30

    # read back through a fresh connection: what was committed survived the failure
    calls = list(open_log(log_path))
    assert len(calls) == 1
    call = calls[0]
    assert call.status == "failed"
    good = [r for r in call if r.error is None]
    bad = [r for r in call if r.error is not None]
    assert sorted((r.phase, r.sample_index) for r in good) == sorted(
        [("selection", i) for i in range(10)] + [("estimation", i) for i in range(10)]
    )
    assert all(r.label in ("A", "B") for r in good)
    assert [(r.phase, r.sample_index) for r in bad] == [("estimation", i) for i in range(10, 20)]
    assert all(r.label is None for r in bad)
    # the record names the original failure (for "raises": the provider's own ConnectionError)
    recorded = "ConnectionError" if mode == "raises" else type(err).__name__
    assert all(recorded in r.error for r in bad)
    if mode == "int_labels":
        assert [r.raw for r in bad] == [0] * 10  # the raw answers are kept for diagnosis
    else:
        assert all(r.raw is None for r in bad)

    # error records are never votes: offline, the 10 failures count only as errors
    partial = RobustAPI("offline", online=False).certify(call)
    assert partial.n == 20 and partial.errors == 10
    assert sum(partial.counts.values()) == 10

    # re-run with the same seed and log: only the failed + missing indices are queried
    fixed = Counting()
    resumed = RobustAPI(fixed, log=log_path, seed=7, batch_size=10, name="flaky-provider").certify(
        IMAGE, noise_sd=SIGMA, N0=10, N=30
    )
    assert fixed.images == 20  # estimation 10..29; selection 0..9 and estimation 0..9 reused
    assert resumed.queries == 20
    assert (resumed.n0, resumed.n, resumed.errors) == (10, 30, 0)
    assert sum(resumed.counts.values()) == 30
    assert sum(resumed.selection_counts.values()) == 10
    est = resumed.logs.phase_records("estimation")  # raises on duplicates
    assert [r.sample_index for r in est] == list(range(30))
    assert [r.reused for r in est] == [True] * 10 + [False] * 20
    assert resumed.logs.status == "complete"

    # and equals an uninterrupted run with the same seed
    clean = RobustAPI(Counting(), log=False, seed=7, batch_size=10, name="flaky-provider").certify(
        IMAGE, noise_sd=SIGMA, N0=10, N=30
    )
    assert (resumed.label, resumed.radius, resumed.p_lower) == (clean.label, clean.radius, clean.p_lower)
    assert resumed.counts == clean.counts and resumed.selection_counts == clean.selection_counts


def test_label_fn_returning_non_str(tmp_path):
    provider = Counting()
    api = RobustAPI(
        lambda batch: [{"top": 3, "score": 0.9} for _ in provider(batch)],
        log=tmp_path / "log.sqlite3",
        seed=0,
        label_fn=lambda raw: raw["top"],
    )
    with pytest.raises(ProviderResponseError) as excinfo:
        api.certify(IMAGE, noise_sd=SIGMA, N0=4, N=6)
    assert isinstance(excinfo.value, ValueError)
    assert "label_fn produced a label of type int" in str(excinfo.value)
    assert "labels must be str" in str(excinfo.value)
    call = next(iter(open_log(tmp_path / "log.sqlite3")))
    assert call.status == "failed"
    assert [r.label for r in call] == [None] * 4
    assert [r.raw for r in call] == [{"top": 3, "score": 0.9}] * 4  # raw kept, label not voted
    assert all("ProviderResponseError" in r.error for r in call)


def _non_json_api(log):
    provider = Counting()

    def answers_objects(batch):
        provider(batch)
        return [object() for _ in batch]

    return provider, RobustAPI(answers_objects, log=log, seed=0, label_fn=lambda raw: "A")


def test_non_json_raw_response_is_a_provider_response_error_sqlite(tmp_path):
    provider, api = _non_json_api(tmp_path / "log.sqlite3")
    with pytest.raises(ProviderResponseError) as excinfo:
        api.certify(IMAGE, noise_sd=SIGMA, N0=2, N=2)
    assert "not JSON-serializable" in str(excinfo.value) and "label_fn=" in str(excinfo.value)
    assert provider.calls == 1  # stops at the first bad batch
    assert next(iter(open_log(tmp_path / "log.sqlite3"))).status == "failed"


def test_non_json_raw_response_is_a_provider_response_error_memory():
    provider, api = _non_json_api(False)
    with pytest.raises(ProviderResponseError):
        api.certify(IMAGE, noise_sd=SIGMA, N0=2, N=2)


def test_non_json_raw_response_batch_is_logged_as_errors(tmp_path):
    provider, api = _non_json_api(tmp_path / "log.sqlite3")
    with pytest.raises(ProviderResponseError):
        api.certify(IMAGE, noise_sd=SIGMA, N0=2, N=2)
    call = next(iter(open_log(tmp_path / "log.sqlite3")))
    assert [(r.phase, r.sample_index, r.label, r.raw) for r in call] == [
        ("selection", 0, None, None),
        ("selection", 1, None, None),
    ]
    assert all("not JSON-serializable" in r.error for r in call)


# -- denoisers -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "denoiser, phrases",
    [
        (lambda x: x[:, :4], ["returned shape", "(2, 4, 8, 1)", "(2, 8, 8, 1)"]),
        (lambda x: x[..., 0], ["returned shape"]),
        (lambda x: np.full_like(x, np.nan), ["NaN or infinite"]),
        (lambda x: 1 / 0, ["the denoiser failed", "ZeroDivisionError"]),
    ],
    ids=["cropped", "dropped_channel", "nan", "raises"],
)
def test_bad_denoiser_raises_denoiser_error_before_the_provider(denoiser, phrases, counting):
    api = RobustAPI(counting, denoiser=denoiser, log=False, seed=0)
    with pytest.raises(DenoiserError) as excinfo:
        api.certify(IMAGE, noise_sd=SIGMA, N0=2, N=2)
    assert isinstance(excinfo.value, RuntimeError)
    for phrase in phrases:
        assert phrase in str(excinfo.value)
    assert counting.images == 0
    call = next(iter(api.log))
    assert call.status == "failed" and len(call) == 0


def test_denoiser_of_wrong_type(counting):
    with pytest.raises(InvalidParameterError) as excinfo:
        RobustAPI(counting, denoiser=42, log=False)
    assert_rejected(excinfo, InvalidParameterError, ["denoiser must be None", "got int"], counting)


@pytest.mark.torch
def test_unknown_denoiser_name_lists_the_shipped_ones(counting):
    with pytest.raises(DenoiserError) as excinfo:
        RobustAPI(counting, denoiser="dncnn", log=False)
    assert_rejected(excinfo, DenoiserError, ["no shipped denoiser or file named 'dncnn'", "shipped:"], counting)


# -- provider names and log paths ------------------------------------------------------------


@pytest.mark.parametrize("name", ["no-such-provider", "LOCAL", ""])
def test_unknown_provider_lists_known_ones(name, tmp_path):
    with pytest.raises(UnknownProviderError) as excinfo:
        RobustAPI(name, log=tmp_path / "log.sqlite3")
    err = excinfo.value
    assert isinstance(err, ValueError)
    assert f"unknown provider {name!r}" in str(err)
    assert "known providers:" in str(err) and "local" in str(err)
    assert not (tmp_path / "log.sqlite3").exists()


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _make_foreign(tmp_path: Path, kind: str) -> Path:
    if kind == "text":
        path = tmp_path / "notes.sqlite3"
        path.write_text("key,value\nnot,a log\n")
        return path
    if kind == "empty_file":
        path = tmp_path / "empty.sqlite3"
        path.write_bytes(b"")
        return path
    path = tmp_path / f"{kind}.db"
    conn = sqlite3.connect(path)
    if kind == "sqlite_wal":
        conn.execute("PRAGMA journal_mode=WAL")
    if kind == "sqlite_other_meta":
        conn.execute("CREATE TABLE meta (key TEXT, value TEXT)")
        conn.execute("INSERT INTO meta VALUES ('format', 'someone.else')")
    else:
        conn.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
        conn.execute("INSERT INTO customers (name) VALUES ('x')")
    conn.commit()
    conn.close()
    return path


FOREIGN = ["text", "empty_file", "sqlite", "sqlite_other_meta", "sqlite_wal"]


@pytest.mark.parametrize("kind", FOREIGN)
@pytest.mark.parametrize("opener", ["RobustAPI", "open_log"])
def test_foreign_file_is_not_a_query_log_and_left_untouched(kind, opener, tmp_path, counting):
    path = _make_foreign(tmp_path, kind)
    before = _sha256(path)
    listing = sorted(os.listdir(tmp_path))
    with pytest.raises(NotAQueryLogError) as excinfo:
        if opener == "RobustAPI":
            RobustAPI(counting, log=path, seed=0)
        else:
            open_log(path)
    err = excinfo.value
    assert isinstance(err, ValueError)
    assert "not a robust_api query log" in str(err) and "left untouched" in str(err)
    assert _sha256(path) == before
    assert counting.images == 0
    if kind != "sqlite_wal":  # see test_foreign_wal_database_leaves_no_side_files
        assert sorted(os.listdir(tmp_path)) == listing


@pytest.mark.parametrize("opener", ["RobustAPI", "open_log"])
def test_foreign_wal_database_leaves_no_side_files(opener, tmp_path, counting):
    path = _make_foreign(tmp_path, "sqlite_wal")
    listing = sorted(os.listdir(tmp_path))
    with pytest.raises(NotAQueryLogError):
        if opener == "RobustAPI":
            RobustAPI(counting, log=path, seed=0)
        else:
            open_log(path)
    assert sorted(os.listdir(tmp_path)) == listing


def test_log_that_is_not_a_path(counting):
    with pytest.raises(InvalidParameterError) as excinfo:
        RobustAPI(counting, log=42)
    assert "log must be a path, a folder, a QueryLog" in str(excinfo.value)


# -- offline mode ----------------------------------------------------------------------------


@pytest.fixture
def certified():
    """A certify call (in memory) and its certificate."""
    api = RobustAPI(Counting(), log=False, seed=3)
    return api.certify(IMAGE, noise_sd=SIGMA, N0=10, N=40)


@pytest.fixture
def offline():
    return RobustAPI("local", online=False)


@pytest.mark.parametrize("method", ["certify", "predict"])
@pytest.mark.parametrize("image", [IMAGE, "some/image.png"], ids=["array", "path"])
def test_offline_api_refuses_images(method, image, offline):
    with pytest.raises(OfflineModeError) as excinfo:
        getattr(offline, method)(image, noise_sd=SIGMA)
    err = excinfo.value
    assert isinstance(err, RuntimeError) and isinstance(err, RobustAPIError)
    assert "offline" in str(err) and "online=True" in str(err) and "open_log" in str(err)
    assert offline.provider is None  # no provider was ever built, so nothing could be sent


@pytest.mark.parametrize("method", ["certify", "predict"])
def test_offline_api_refuses_images_without_noise_sd(method, offline):
    with pytest.raises(OfflineModeError):
        getattr(offline, method)(IMAGE)


def test_offline_certify_other_noise_sd(certified, offline):
    with pytest.raises(LogMismatchError) as excinfo:
        offline.certify(certified.logs, noise_sd=0.5)
    err = excinfo.value
    assert isinstance(err, ValueError)
    assert "differs from the logged noise_sd=0.25" in str(err) and "Omit noise_sd" in str(err)
    # the logged value itself is fine
    assert offline.certify(certified.logs, noise_sd=SIGMA).radius == certified.radius


@pytest.mark.parametrize("field, value, logged", [("N", 41, 40), ("N0", 11, 10), ("N", 10**6, 40)])
def test_offline_certify_more_samples_than_logged(field, value, logged, certified, offline):
    with pytest.raises(LogMismatchError) as excinfo:
        offline.certify(certified.logs, **{field: value})
    assert isinstance(excinfo.value, ValueError)
    assert f"{field}={value} but the log holds only {logged}" in str(excinfo.value)
    assert f"pass {field} <= {logged}" in str(excinfo.value)


@pytest.mark.parametrize("field", ["N", "N0"])
@pytest.mark.parametrize("value", [0, -1, 1.5, "10"])
def test_offline_certify_bad_sample_count(field, value, certified, offline):
    with pytest.raises(InvalidParameterError) as excinfo:
        offline.certify(certified.logs, **{field: value})
    assert field in str(excinfo.value)


@pytest.mark.parametrize("alpha", [0, 1, float("nan"), "0.01"])
def test_offline_certify_bad_alpha(alpha, certified, offline):
    with pytest.raises(InvalidParameterError):
        offline.certify(certified.logs, alpha=alpha)


@pytest.mark.parametrize("noise_sd", ["abc", [0.25], "0.25"], ids=repr)
def test_offline_certify_noise_sd_is_validated_like_online(noise_sd, certified, offline):
    with pytest.raises(InvalidParameterError):
        offline.certify(certified.logs, noise_sd=noise_sd)


@pytest.mark.parametrize("noise_sd", ["abc", "0.25", True], ids=repr)
def test_offline_predict_noise_sd_is_validated(noise_sd, certified, offline):
    with pytest.raises(InvalidParameterError) as excinfo:
        offline.predict(certified.logs, noise_sd=noise_sd)
    assert "noise_sd must be a finite number" in str(excinfo.value)


def test_certify_on_predict_logs(offline):
    pred = RobustAPI(Counting(), log=False, seed=1).predict(IMAGE, N=20, noise_sd=SIGMA)
    with pytest.raises(LogMismatchError) as excinfo:
        offline.certify(pred.logs)
    assert isinstance(excinfo.value, ValueError)
    assert "is a predict call" in str(excinfo.value) and "use predict(logs)" in str(excinfo.value)
    # on an online API too: a CallLog always takes the offline path
    with pytest.raises(LogMismatchError):
        RobustAPI(Counting(), log=False).certify(pred.logs)


def test_offline_predict_more_samples_than_logged(certified, offline):
    with pytest.raises(LogMismatchError) as excinfo:
        offline.predict(certified.logs, N=41)
    assert "N=41 but the log holds only 40 estimation samples" in str(excinfo.value)


@pytest.mark.parametrize("logs", [[], [("A", 1)], ("A", "B")], ids=["empty_list", "list", "tuple"])
def test_offline_helper_rejects_plain_lists(logs):
    from robust_api.offline import certify_from_log, predict_from_log

    for fn in (certify_from_log, predict_from_log):
        with pytest.raises(InvalidInputError) as excinfo:
            fn(logs)
        assert isinstance(excinfo.value, ValueError)
        assert "needs a CallLog" in str(excinfo.value)
        assert "plain list" in str(excinfo.value)


@pytest.mark.parametrize("kwargs", [{}, {"noise_sd": SIGMA}], ids=["no_noise_sd", "noise_sd"])
@pytest.mark.parametrize("method", ["certify", "predict"])
def test_offline_api_rejects_plain_list_as_invalid_input(method, kwargs, offline):
    with pytest.raises(InvalidInputError) as excinfo:
        getattr(offline, method)([{"label": "A"}, {"label": "B"}], **kwargs)
    assert "needs a CallLog" in str(excinfo.value)


@pytest.mark.parametrize("problem", ["duplicate", "gap"])
def test_offline_certify_on_inconsistent_records(problem, certified, offline):
    records = list(certified.logs.records)
    estimation = [r for r in records if r.phase == "estimation"]
    if problem == "duplicate":
        records.append(estimation[5])
    else:
        records.remove(estimation[5])
    with pytest.raises(LogIntegrityError) as excinfo:
        offline.certify(certified.logs.with_records(records))
    assert isinstance(excinfo.value, ValueError)
    assert f"{'duplicate' if problem == 'duplicate' else 'missing'} record near estimation sample" in str(excinfo.value)


def test_every_input_error_is_a_value_error():
    """The documented error tree (errors.py docstring)."""
    for cls in (InvalidInputError, InvalidImageError, InvalidParameterError, UnknownProviderError,
                ProviderResponseError, NotAQueryLogError, LogIntegrityError, LogMismatchError):
        assert issubclass(cls, ValueError) and issubclass(cls, RobustAPIError), cls
    for cls in (ProviderError, DenoiserError, OfflineModeError):
        assert issubclass(cls, RuntimeError) and issubclass(cls, RobustAPIError), cls
    assert issubclass(robust_api.MissingDependencyError, ImportError)
