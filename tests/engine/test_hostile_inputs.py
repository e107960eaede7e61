"""The hostile-input corpus: images, arrays, predecessor pickles and parameters built to crash,
hang, exhaust or fool the SDK, through the library and through the command line.

Every case asserts three things:

* the exact error type (the project's typed errors, never a bare TypeError or a traceback);
* nothing was sent: the provider is a counting callable and it saw no call;
* nothing was written: the log's files are byte-for-byte what they were before (a log that
  already holds a call), or no log file was created at all.

Inputs that would block the test run if a regression came back (FIFOs) run in a child
interpreter with a generous timeout. Hostile *log files* (SQLite, JSONL) are covered by
tests/query_logs/test_hostile_logs.py; the deeper regression tests of the pickle loader (hash collisions
at scale, memory limits) are in tests/query_logs/test_legacy.py.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import struct
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
from numpy.lib.stride_tricks import as_strided

import robust_api
from robust_api import (
    ImageTooLargeError,
    InvalidImageError,
    InvalidInputError,
    InvalidParameterError,
    NotAQueryLogError,
    OfflineModeError,
    RobustAPI,
    RobustAPIError,
    UnknownProviderError,
    UnsafePickleError,
)
from robust_api.commands.cli import main
from robust_api.providers import base as provider_registry
from robust_api.query_logs.legacy import import_legacy

from doubles import Counting  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:the matrix subclass:PendingDeprecationWarning")

SIGMA = 0.25
GRAY = np.full((8, 8, 3), 0.3, dtype=np.float32)
CHILD_TIMEOUT_S = 300


# ---------------------------------------------------------------------------------------
# what "nothing written" means
# ---------------------------------------------------------------------------------------
def files_of(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` and its bytes (SQLite's ``-shm`` index excluded: readers may
    touch it without writing anything)."""
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and not p.name.endswith("-shm")}


@pytest.fixture
def primed(tmp_path):
    """(api, counting provider, log folder): an SQLite log that already holds one complete call;
    the provider's counters are reset after it. max_queries keeps a regression that accepted
    N=10**12 from allocating a record per sample (it fails on the budget instead)."""
    counting = Counting()
    folder = tmp_path / "logs"
    api = RobustAPI(counting, log=folder / "log.sqlite3", seed=0, max_queries=1000)
    api.certify(GRAY, noise_sd=SIGMA, N0=2, N=3)
    counting.calls = counting.images = 0
    return api, counting, folder


def assert_refused(excinfo, error: type, counting: Counting) -> None:
    err = excinfo.value
    assert type(err) is error, f"expected {error.__name__}, got {type(err).__name__}: {err}"
    assert isinstance(err, RobustAPIError) and str(err)
    assert counting.calls == 0 and counting.images == 0, "a refused input reached the provider"


# ---------------------------------------------------------------------------------------
# image files
# ---------------------------------------------------------------------------------------
def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png_header(width: int, height: int, depth: int = 8, color: int = 0) -> bytes:
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth, color, 0, 0, 0))


def _good_png() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray((np.arange(64, dtype=np.uint8).reshape(8, 8) * 3)).save(buffer, "PNG")
    return buffer.getvalue()


def _jpeg() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buffer, "JPEG")
    return buffer.getvalue()


def _gif_bomb() -> bytes:
    """A GIF whose screen and first frame claim 65535×65535 (4.3 gigapixels) in 40 bytes."""
    side = struct.pack("<HH", 65535, 65535)
    return (b"GIF89a" + side + b"\x00\x00\x00"          # logical screen, no global palette
            + b"\x2c\x00\x00\x00\x00" + side + b"\x00"  # image descriptor
            + b"\x02\x02\x44\x01\x00" + b";")           # LZW data, trailer


def _with_flipped_idat_byte(png: bytes) -> bytes:
    start = png.index(b"IDAT") + 6
    return png[:start] + bytes([png[start] ^ 0xFF]) + png[start + 1:]


def _write(data: bytes, name: str) -> Callable[[Path], str]:
    def make(root: Path) -> str:
        path = root / name
        path.write_bytes(data)
        return str(path)

    return make


def _float_tiff(root: Path) -> str:
    from PIL import Image

    path = root / "float.tiff"
    Image.new("F", (8, 8)).save(path)  # 32-bit float pixels: no mode the SDK reads
    return str(path)


def _directory(root: Path) -> str:
    (root / "photo.png").mkdir()
    return str(root / "photo.png")


IMAGE_FILES: dict[str, tuple[Callable[[Path], Any], type]] = {
    "truncated-png": (lambda root: _write(_good_png()[:-30], "truncated.png")(root), InvalidImageError),
    "png-cut-in-header": (lambda root: _write(_good_png()[:20], "cut.png")(root), InvalidImageError),
    "zero-byte-png": (_write(b"", "empty.png"), InvalidImageError),
    "text-named-png": (_write(b"just some notes\n", "notes.png"), InvalidImageError),
    "html-error-page-named-jpg": (_write(b"<html><body>403 Forbidden</body></html>", "photo.jpg"), InvalidImageError),
    "png-bomb-header-100000x100000": (
        _write(_png_header(100_000, 100_000) + _png_chunk(b"IDAT", zlib.compress(b"\0" * 16)) + _png_chunk(b"IEND", b""),
               "bomb.png"), ImageTooLargeError),
    "png-header-60-megapixels": (  # above the 50 MP limit, below Pillow's own guard: refused from the header
        _write(_png_header(10_000, 6_000) + _png_chunk(b"IDAT", zlib.compress(b"\0" * 16)) + _png_chunk(b"IEND", b""),
               "huge.png"), ImageTooLargeError),
    "gif-bomb-65535x65535": (_write(_gif_bomb(), "bomb.gif"), ImageTooLargeError),
    "png-zero-width": (_write(_png_header(0, 8) + _png_chunk(b"IEND", b""), "zero.png"), InvalidImageError),
    "png-corrupt-idat": (lambda root: _write(_with_flipped_idat_byte(_good_png()), "crc.png")(root), InvalidImageError),
    "truncated-jpeg": (lambda root: _write(_jpeg()[:900], "cut.jpg")(root), InvalidImageError),
    "float32-tiff": (_float_tiff, InvalidImageError),
    "directory-named-png": (_directory, InvalidImageError),
    "missing-file": (lambda root: str(root / "nowhere.png"), InvalidImageError),
    "path-with-nul": (lambda root: str(root / "a\x00b.png"), InvalidImageError),
    "character-device": (lambda root: "/dev/zero" if os.path.exists("/dev/zero") else pytest.skip("no /dev/zero"),
                         InvalidImageError),
    "pathlike-to-missing": (lambda root: root / "missing.png", InvalidImageError),
}


# ---------------------------------------------------------------------------------------
# arrays and other objects passed as an image
# ---------------------------------------------------------------------------------------
def _masked() -> np.ma.MaskedArray:
    masked = np.ma.masked_array(GRAY.copy(), mask=np.zeros(GRAY.shape, bool))
    masked.mask[0, 0, 0] = True
    return masked


def _torch_tensor(shape=(8, 8, 3), value=0.3):
    torch = pytest.importorskip("torch")
    return torch.full(shape, value)


ARRAYS: dict[str, tuple[Callable[[], Any], type]] = {
    "np-matrix-with-nan": (lambda: np.matrix([[0.1, np.nan], [0.2, 0.3]]), InvalidImageError),
    "object-dtype": (lambda: np.full((8, 8), 0.3, dtype=object), InvalidImageError),
    "complex-dtype": (lambda: GRAY.astype(np.complex64), InvalidImageError),
    "bool-dtype": (lambda: np.ones((8, 8), bool), InvalidImageError),
    "int64-dtype": (lambda: np.zeros((8, 8), np.int64), InvalidImageError),
    "int8-dtype": (lambda: np.zeros((8, 8), np.int8), InvalidImageError),
    "uint32-dtype": (lambda: np.zeros((8, 8), np.uint32), InvalidImageError),
    "structured-dtype": (lambda: np.zeros((8, 8), dtype=[("r", "f4"), ("g", "f4")]), InvalidImageError),
    "unicode-dtype": (lambda: np.full((8, 8), "a"), InvalidImageError),
    "datetime-dtype": (lambda: np.zeros((8, 8), "datetime64[s]"), InvalidImageError),
    "nan-pixel": (lambda: np.where(np.eye(8, dtype=bool)[:, :, None], np.float32(np.nan), GRAY), InvalidImageError),
    "inf-pixels": (lambda: np.full((8, 8), np.inf, np.float32), InvalidImageError),
    "float16-inf": (lambda: np.full((8, 8), np.inf, np.float16), InvalidImageError),
    "big-endian-nan": (lambda: np.full((8, 8), np.nan, ">f4"), InvalidImageError),
    "floats-0-to-255": (lambda: GRAY * 255, InvalidImageError),
    "negative-floats": (lambda: np.full((8, 8), -0.1, np.float32), InvalidImageError),
    "negative-strides-out-of-range": (lambda: (GRAY * 4)[::-1, ::-1], InvalidImageError),
    "0-d": (lambda: np.asarray(0.5, np.float32), InvalidImageError),
    "1-d": (lambda: np.zeros(64, np.float32), InvalidImageError),
    "4-d-batch": (lambda: np.stack([GRAY, GRAY]), InvalidImageError),
    "5-d": (lambda: np.zeros((1, 1, 8, 8, 3), np.float32), InvalidImageError),
    "channels-first-rgba": (lambda: np.full((4, 8, 8), 0.3, np.float32), InvalidImageError),
    "5-channels": (lambda: np.zeros((8, 8, 5), np.float32), InvalidImageError),
    "empty-0x8": (lambda: np.zeros((0, 8), np.float32), InvalidImageError),
    "as-strided-100000x100000": (
        lambda: as_strided(np.zeros(1, np.float32), shape=(100_000, 100_000, 3), strides=(0, 0, 0)), ImageTooLargeError),
    "as-strided-1x60000000": (lambda: as_strided(np.zeros(1, np.uint8), shape=(1, 60_000_000), strides=(0, 0)),
                              ImageTooLargeError),
    "masked-array-with-masked-pixel": (_masked, InvalidImageError),
    "torch-tensor-out-of-range": (lambda: _torch_tensor((3, 8, 8), 1.5), InvalidImageError),
    "torch-tensor-batch": (lambda: _torch_tensor((2, 3, 8, 8)), InvalidImageError),
    "nested-list": (lambda: GRAY.tolist(), InvalidImageError),
    "none": (lambda: None, InvalidImageError),
    "bytes-of-a-cut-png": (lambda: _good_png()[:24], InvalidImageError),
    "bytes-not-an-image": (lambda: b"\x89PNG\r\n\x1a\n" + bytes(range(256)), InvalidImageError),
    "dict": (lambda: {"pixels": GRAY}, InvalidImageError),
}

IMAGE_CALLS = {
    "certify": lambda api, image: api.certify(image, noise_sd=SIGMA, N0=2, N=3),
    "predict": lambda api, image: api.predict(image, noise_sd=SIGMA, N=3),
    "certify_many": lambda api, image: api.certify_many([GRAY, image], noise_sd=SIGMA, N0=2, N=3),
}


@pytest.mark.parametrize("call", sorted(IMAGE_CALLS))
@pytest.mark.parametrize("name", sorted(IMAGE_FILES))
def test_hostile_image_files(name, call, primed, tmp_path):
    api, counting, folder = primed
    make, error = IMAGE_FILES[name]
    image = make(tmp_path)
    before = files_of(folder)
    with pytest.raises(InvalidImageError) as excinfo:
        IMAGE_CALLS[call](api, image)
    assert_refused(excinfo, error, counting)
    assert files_of(folder) == before and len(api.log) == 1


@pytest.mark.parametrize("call", sorted(IMAGE_CALLS))
@pytest.mark.parametrize("name", sorted(ARRAYS))
def test_hostile_arrays(name, call, primed):
    api, counting, folder = primed
    make, error = ARRAYS[name]
    image = make()
    before = files_of(folder)
    with pytest.raises(InvalidImageError) as excinfo:
        IMAGE_CALLS[call](api, image)
    assert_refused(excinfo, error, counting)
    assert files_of(folder) == before and len(api.log) == 1


ODD_BUT_VALID = {
    "np-matrix": lambda: np.matrix(np.full((8, 8), 0.3)),
    "non-contiguous": lambda: np.full((16, 16, 3), 0.3, np.float32)[::2, ::2],
    "negative-strides": lambda: GRAY[::-1, ::-1],
    "big-endian-float64": lambda: GRAY.astype(">f8"),
    "fortran-order": lambda: np.asfortranarray(GRAY),
    "masked-array-nothing-masked": lambda: np.ma.masked_array(GRAY, mask=False),
    "read-only": lambda: np.frombuffer(GRAY.tobytes(), np.float32).reshape(GRAY.shape),
    "batch-of-one": lambda: GRAY[None],
    "channels-first": lambda: np.ascontiguousarray(np.transpose(GRAY, (2, 0, 1))),
    "torch-tensor-channels-first": lambda: _torch_tensor((3, 8, 8)),
    "torch-tensor-channels-last": lambda: _torch_tensor((8, 8, 3)),
}


@pytest.mark.parametrize("name", sorted(ODD_BUT_VALID))
def test_odd_but_valid_layouts_are_certified_as_the_plain_array(name, primed):
    """Controls for the array corpus: layouts that are not errors give exactly the answers of
    the plain C-contiguous array (same digest, so the logged answers are reused: 0 paid)."""
    api, counting, _ = primed
    image = ODD_BUT_VALID[name]()
    plain = np.ascontiguousarray(np.asarray(image, dtype=np.float32))
    if plain.ndim == 2:
        plain = np.repeat(plain[:, :, None], 3, axis=2) if name != "np-matrix" else plain
    cert = api.certify(image, noise_sd=SIGMA, N0=2, N=3)
    reference = api.certify(plain, noise_sd=SIGMA, N0=2, N=3)
    assert cert.logs.header.image_digest == reference.logs.header.image_digest
    assert (cert.label, cert.counts) == (reference.label, reference.counts)
    if name != "np-matrix":  # the primed call certified GRAY: its answers are reused
        assert cert.queries == 0 and counting.calls == 0


@pytest.mark.parametrize("name, make", [
    ("cmyk-jpeg", lambda p: p.new("CMYK", (8, 8), (0, 0, 0, 80))),
    ("animated-gif", None),
    ("16-bit-gray-png", lambda p: p.fromarray(np.full((8, 8), 30000, np.uint16))),
])
def test_odd_but_valid_files_are_accepted(name, make, primed, tmp_path):
    """Controls for the file corpus: these are read (CMYK → RGB, a GIF's first frame, all 16 bits)."""
    from PIL import Image

    api, counting, _ = primed
    path = tmp_path / {"cmyk-jpeg": "c.jpg", "animated-gif": "a.gif", "16-bit-gray-png": "g.png"}[name]
    if make is None:
        frames = [Image.new("P", (8, 8), i) for i in range(3)]
        frames[0].save(path, save_all=True, append_images=frames[1:])
    else:
        make(Image).save(path)
    cert = api.certify(str(path), noise_sd=SIGMA, N0=2, N=3)
    assert cert.queries == 5 and counting.images == 5


# ---------------------------------------------------------------------------------------
# parameters
# ---------------------------------------------------------------------------------------
CONSTRUCTOR: dict[str, tuple[dict, type]] = {
    "batch_size=0": ({"batch_size": 0}, InvalidParameterError),
    "batch_size=-1": ({"batch_size": -1}, InvalidParameterError),
    "batch_size=1.5": ({"batch_size": 1.5}, InvalidParameterError),
    "batch_size=True": ({"batch_size": True}, InvalidParameterError),
    "batch_size='8'": ({"batch_size": "8"}, InvalidParameterError),
    "batch_size=10**9": ({"batch_size": 10**9}, InvalidParameterError),
    "concurrency=0": ({"concurrency": 0}, InvalidParameterError),
    "concurrency=10**6": ({"concurrency": 10**6}, InvalidParameterError),
    "rate_limit=0": ({"rate_limit": 0}, InvalidParameterError),
    "rate_limit=-5": ({"rate_limit": -5}, InvalidParameterError),
    "rate_limit=nan": ({"rate_limit": float("nan")}, InvalidParameterError),
    "rate_limit=1e-300": ({"rate_limit": 1e-300}, InvalidParameterError),
    "rate_limit='10'": ({"rate_limit": "10"}, InvalidParameterError),
    "retry=0": ({"retry": 0}, InvalidParameterError),
    "retry=10**9": ({"retry": 10**9}, InvalidParameterError),
    "retry=2.5": ({"retry": 2.5}, InvalidParameterError),
    "retry waits 1e300 s": ({"retry": robust_api.RetryPolicy(max_backoff_s=1e300, initial_backoff_s=1e300)},
                            InvalidParameterError),
    "max_queries=-1": ({"max_queries": -1}, InvalidParameterError),
    "max_queries=1.5": ({"max_queries": 1.5}, InvalidParameterError),
    "max_cost_usd=nan": ({"max_cost_usd": float("nan")}, InvalidParameterError),
    "max_cost_usd=inf": ({"max_cost_usd": float("inf")}, InvalidParameterError),
    "max_cost_usd=-1": ({"max_cost_usd": -1}, InvalidParameterError),
    "seed=-1": ({"seed": -1}, InvalidParameterError),
    "seed=2**63": ({"seed": 2**63}, InvalidParameterError),
    "online='no'": ({"online": "no"}, InvalidParameterError),
    "progress='yes'": ({"progress": "yes"}, InvalidParameterError),
    "class_names='AB'": ({"class_names": "AB"}, InvalidParameterError),
    "device='bogus'": ({"device": "bogus"}, InvalidParameterError),
    "label_fn=3": ({"label_fn": 3}, InvalidParameterError),
    "unknown-option": ({"endpont": "http://typo"}, InvalidParameterError),
    "denoiser=3": ({"denoiser": 3}, InvalidParameterError),
    "log=3": ({"log": 3}, InvalidParameterError),
    "cost_per_query_usd=nan": ({"cost_per_query_usd": float("nan")}, InvalidParameterError),
}


@pytest.mark.parametrize("name", [pytest.param(name, marks=pytest.mark.torch) if name.startswith("device") else name
                                  for name in sorted(CONSTRUCTOR)])
def test_hostile_constructor_arguments(name, tmp_path):
    counting = Counting()
    kwargs, error = CONSTRUCTOR[name]
    log = tmp_path / "logs" / "log.sqlite3"
    with pytest.raises(InvalidInputError) as excinfo:
        RobustAPI(counting, **{"log": log, **kwargs})
    assert_refused(excinfo, error, counting)
    assert files_of(tmp_path) == {}, "a refused constructor created a log"


def test_unknown_provider_name_creates_nothing(tmp_path):
    with pytest.raises(UnknownProviderError):
        RobustAPI("no-such-provider", log=tmp_path / "log.sqlite3")
    assert files_of(tmp_path) == {}


CALLS: dict[str, tuple[Callable[[RobustAPI], Any], type]] = {
    "certify N=0": (lambda api: api.certify(GRAY, noise_sd=SIGMA, N0=2, N=0), InvalidParameterError),
    "certify N=-1": (lambda api: api.certify(GRAY, noise_sd=SIGMA, N0=2, N=-1), InvalidParameterError),
    "certify N=1.5": (lambda api: api.certify(GRAY, noise_sd=SIGMA, N0=2, N=1.5), InvalidParameterError),
    "certify N=True": (lambda api: api.certify(GRAY, noise_sd=SIGMA, N0=2, N=True), InvalidParameterError),
    "certify N='100'": (lambda api: api.certify(GRAY, noise_sd=SIGMA, N0=2, N="100"), InvalidParameterError),
    "certify N=10**12": (lambda api: api.certify(GRAY, noise_sd=SIGMA, N0=2, N=10**12), InvalidParameterError),
    "certify N0=0": (lambda api: api.certify(GRAY, noise_sd=SIGMA, N0=0, N=3), InvalidParameterError),
    "certify N0=10**12": (lambda api: api.certify(GRAY, noise_sd=SIGMA, N0=10**12, N=3), InvalidParameterError),
    "certify noise_sd=0": (lambda api: api.certify(GRAY, noise_sd=0, N0=2, N=3), InvalidParameterError),
    "certify noise_sd=-0.1": (lambda api: api.certify(GRAY, noise_sd=-0.1, N0=2, N=3), InvalidParameterError),
    "certify noise_sd=25": (lambda api: api.certify(GRAY, noise_sd=25, N0=2, N=3), InvalidParameterError),
    "certify noise_sd=nan": (lambda api: api.certify(GRAY, noise_sd=float("nan"), N0=2, N=3), InvalidParameterError),
    "certify noise_sd='0.25'": (lambda api: api.certify(GRAY, noise_sd="0.25", N0=2, N=3), InvalidParameterError),
    "certify alpha=0": (lambda api: api.certify(GRAY, noise_sd=SIGMA, N0=2, N=3, alpha=0), InvalidParameterError),
    "certify alpha=1": (lambda api: api.certify(GRAY, noise_sd=SIGMA, N0=2, N=3, alpha=1), InvalidParameterError),
    "certify alpha=nan": (lambda api: api.certify(GRAY, noise_sd=SIGMA, N0=2, N=3, alpha=float("nan")),
                          InvalidParameterError),
    "certify seed=-1": (lambda api: api.certify(GRAY, noise_sd=SIGMA, N0=2, N=3, seed=-1), InvalidParameterError),
    "certify method='COHEN'": (lambda api: api.certify(GRAY, noise_sd=SIGMA, method="COHEN"), InvalidParameterError),
    "certify method=0": (lambda api: api.certify(GRAY, noise_sd=SIGMA, method=0), InvalidParameterError),
    "certify selection='best'": (lambda api: api.certify(GRAY, noise_sd=SIGMA, selection="best"),
                                 InvalidParameterError),
    "certify N0 with clean selection": (lambda api: api.certify(GRAY, noise_sd=SIGMA, N0=5, selection="clean"),
                                        InvalidParameterError),
    "certify radius with cohen": (lambda api: api.certify(GRAY, noise_sd=SIGMA, radius=0.5), InvalidParameterError),
    "sequential radius=-1": (lambda api: api.certify(GRAY, noise_sd=SIGMA, method="sequential", radius=-1),
                             InvalidParameterError),
    "sequential radius=nan": (lambda api: api.certify(GRAY, noise_sd=SIGMA, method="sequential", radius=float("nan")),
                              InvalidParameterError),
    "sequential unreachable radius": (
        lambda api: api.certify(GRAY, noise_sd=SIGMA, method="sequential", radius=10.0, N=100), InvalidParameterError),
    "sequential tolerance=-1": (lambda api: api.certify(GRAY, noise_sd=SIGMA, method="sequential", tolerance=-1),
                                InvalidParameterError),
    "predict N=0": (lambda api: api.predict(GRAY, noise_sd=SIGMA, N=0), InvalidParameterError),
    "predict N=10**12": (lambda api: api.predict(GRAY, noise_sd=SIGMA, N=10**12), InvalidParameterError),
    "predict noise_sd=None": (lambda api: api.predict(GRAY, N=3), InvalidParameterError),
    "predict noise_sd=-1": (lambda api: api.predict(GRAY, noise_sd=-1, N=3), InvalidParameterError),
    "predict alpha='0.1'": (lambda api: api.predict(GRAY, noise_sd=SIGMA, N=3, alpha="0.1"), InvalidParameterError),
    "certify_many images=[]": (lambda api: api.certify_many([], noise_sd=SIGMA), InvalidParameterError),
    "certify_many images=stack": (lambda api: api.certify_many(np.stack([GRAY, GRAY]), noise_sd=SIGMA),
                                  InvalidParameterError),
    "certify_many parallel=0": (lambda api: api.certify_many([GRAY], noise_sd=SIGMA, N0=2, N=3, parallel=0),
                                InvalidParameterError),
    "certify_many parallel=10**6": (lambda api: api.certify_many([GRAY], noise_sd=SIGMA, N0=2, N=3, parallel=10**6),
                                    InvalidParameterError),
    "certify_batch total_queries=0": (lambda api: api.certify_batch([GRAY], noise_sd=SIGMA, total_queries=0),
                                      InvalidParameterError),
    "certify_batch total_queries=10**13": (
        lambda api: api.certify_batch([GRAY], noise_sd=SIGMA, total_queries=10**13), InvalidParameterError),
    "certify_batch too small": (lambda api: api.certify_batch([GRAY] * 5, noise_sd=SIGMA, total_queries=3),
                                InvalidParameterError),
    "certify_batch images='x.png'": (lambda api: api.certify_batch("x.png", noise_sd=SIGMA, total_queries=100),
                                     InvalidParameterError),
}


@pytest.mark.parametrize("name", sorted(CALLS))
def test_hostile_call_arguments(name, primed):
    api, counting, folder = primed
    call, error = CALLS[name]
    before = files_of(folder)
    with pytest.raises(InvalidInputError) as excinfo:
        call(api)
    assert_refused(excinfo, error, counting)
    assert files_of(folder) == before and len(api.log) == 1


def test_an_offline_api_refuses_images_and_writes_nothing(tmp_path):
    offline = RobustAPI("anything", online=False)
    for image in (GRAY, str(tmp_path / "x.png")):
        for call in (lambda: offline.certify(image, noise_sd=SIGMA), lambda: offline.predict(image, N=3)):
            with pytest.raises(OfflineModeError):
                call()
    assert files_of(tmp_path) == {}


# ---------------------------------------------------------------------------------------
# predecessor pickles
# ---------------------------------------------------------------------------------------
class _Reducer:
    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


class _Plain:
    def __init__(self):
        self.name = "cat"


def _valid(pred=None) -> dict:
    answer = [{"Name": "Cat", "Confidence": 97.0}]
    return {"ground_truth": [answer], "pred": pred if pred is not None else [answer] * 30}


def _shared_bomb() -> bytes:
    bomb: Any = ["x"]
    for _ in range(40):
        bomb = [bomb, bomb]
    return pickle.dumps(_valid([bomb] * 30))


def _deep() -> bytes:
    deep: Any = []
    for _ in range(150):
        deep = [deep]
    return pickle.dumps(_valid([deep] * 30))


def _cyclic() -> bytes:
    cycle: list = []
    cycle.append(cycle)
    return pickle.dumps(_valid([cycle] * 30))


def _colliding_keys() -> bytes:
    keys = [k * (2**61 - 1) for k in range(1, 21)]  # all hash to 0 on 64-bit CPython
    return pickle.dumps(_valid([[{"Name": "Cat", "extra": dict.fromkeys(keys)}]] * 30), protocol=2)


PICKLES: dict[str, tuple[Callable[[Path], bytes], type]] = {
    "os.system": (lambda marker: pickle.dumps(_Reducer(os.system, f"touch {marker}")), UnsafePickleError),
    "eval": (lambda marker: pickle.dumps(_valid([_Reducer(eval, f"open({str(marker)!r}, 'w')")] * 30)),
             UnsafePickleError),
    "subprocess-in-a-response": (
        lambda marker: pickle.dumps(_valid([[{"Name": _Reducer(subprocess.call, ["touch", str(marker)])}]] * 30)),
        UnsafePickleError),
    "object-with-state (BUILD)": (lambda marker: pickle.dumps(_valid([_Plain()] * 30), protocol=2), UnsafePickleError),
    "numpy-scalar": (lambda marker: pickle.dumps(_valid([[{"Name": "Cat", "Confidence": np.float64(97.0)}]] * 30)),
                     UnsafePickleError),
    "hash-colliding-keys": (lambda marker: _colliding_keys(), UnsafePickleError),
    "tuple-dict-key": (lambda marker: pickle.dumps(_valid([[{("Name",): "Cat"}]] * 30)), UnsafePickleError),
    "deep-tuple-dict-key": (lambda marker: b"\x80\x02}" + b")" + b"\x85" * 2000 + b"Ns.", UnsafePickleError),
    "memo-index-2**24": (lambda marker: b"\x80\x02N" + b"r" + struct.pack("<I", 2**24) + b".", UnsafePickleError),
    "4000-bit-integer": (lambda marker: pickle.dumps(_valid([[{"Name": "Cat", "Id": 2**4000}]] * 30)),
                         UnsafePickleError),
    "persistent-id": (lambda marker: b"\x80\x02" + b"X\x01\x00\x00\x00xQ" + b".", UnsafePickleError),
    "set": (lambda marker: pickle.dumps(_valid([[{"Name": "Cat", "Tags": {"a", "b"}}]] * 30), protocol=4),
            NotAQueryLogError),
    "shared-reference-bomb": (lambda marker: _shared_bomb(), NotAQueryLogError),
    "nested-150-deep": (lambda marker: _deep(), NotAQueryLogError),
    "cycle": (lambda marker: _cyclic(), NotAQueryLogError),
    "zero-byte": (lambda marker: b"", NotAQueryLogError),
    "truncated": (lambda marker: pickle.dumps(_valid())[:-40], NotAQueryLogError),
    "text": (lambda marker: b"ground_truth: cat\n", NotAQueryLogError),
    "a-list-not-a-dict": (lambda marker: pickle.dumps([1, 2, 3]), NotAQueryLogError),
    "invalid-utf8-python2-str": (lambda marker: b"\x80\x02U\x02\xff\xfe.", NotAQueryLogError),
    "wrong-api-shape": (lambda marker: pickle.dumps({"ground_truth": ["cat"], "pred": ["cat"] * 30}),
                        NotAQueryLogError),
}


@pytest.mark.parametrize("name", sorted(PICKLES))
def test_hostile_predecessor_pickles(name, tmp_path):
    make, error = PICKLES[name]
    marker = tmp_path / "MARKER"
    folder = tmp_path / "legacy"
    folder.mkdir()
    good = folder / "pred_hist_0.pkl"
    good.write_bytes(pickle.dumps(_valid()))
    (folder / "pred_hist_1.pkl").write_bytes(make(marker))
    existing = tmp_path / "existing.sqlite3"
    import_legacy(good, "aws", SIGMA, out=existing).close()
    before = existing.read_bytes()
    out = tmp_path / "new" / "log.sqlite3"
    for target in (out, existing, tmp_path / "out.jsonl"):
        with pytest.raises(NotAQueryLogError) as excinfo:
            import_legacy(folder, "aws", SIGMA, out=target)
        assert type(excinfo.value) is error, f"{type(excinfo.value).__name__}: {excinfo.value}"
        assert "pred_hist_1.pkl" in str(excinfo.value)
    assert not marker.exists(), "the pickle ran code"
    assert not out.exists() and not out.parent.exists() and not (tmp_path / "out.jsonl").exists()
    assert existing.read_bytes() == before


# ---------------------------------------------------------------------------------------
# the command line
# ---------------------------------------------------------------------------------------
CLI_COUNTER = Counting()


@pytest.fixture
def cli(tmp_path, monkeypatch):
    """(run(argv) -> (status, stdout, stderr), folder): the CLI with a counting provider
    registered as "hostile-counting"; images good.png, notes.png, truncated.png, bomb.png."""
    monkeypatch.setitem(provider_registry._REGISTRY, "hostile-counting",
                        lambda **options: robust_api.CallableProvider(CLI_COUNTER, name="hostile-counting"))
    CLI_COUNTER.calls = CLI_COUNTER.images = 0
    (tmp_path / "good.png").write_bytes(_good_png())
    (tmp_path / "notes.png").write_text("not an image")
    (tmp_path / "truncated.png").write_bytes(_good_png()[:-30])
    IMAGE_FILES["png-bomb-header-100000x100000"][0](tmp_path)
    (tmp_path / "a folder.png").mkdir()
    (tmp_path / "pred_hist_0.pkl").write_bytes(pickle.dumps(_Reducer(os.system, f"touch {tmp_path / 'MARKER'}")))
    (tmp_path / "pred_hist_1.pkl").write_bytes(_colliding_keys())
    monkeypatch.chdir(tmp_path)

    def run(argv):
        try:
            return main(argv)
        except SystemExit as exit_:  # argparse's errors: its usage block, then the one-line error
            return ("argparse", exit_.code)

    return run, tmp_path


# --max-queries: a regression that accepted an absurd argument fails on the budget (and the
# phrase check below) instead of sending 10**11 queries or sleeping 10**9 s between two
ONLINE = ["--provider", "hostile-counting", "--log", "logs/log.sqlite3", "--no-progress", "--max-queries", "50"]
CLI_CASES = {  # name: (argv, a phrase the error line must hold)
    "certify --N 0": (["certify", "good.png", "--noise-sd", "0.25", "--N", "0"], "--N"),
    "certify --N abc": (["certify", "good.png", "--noise-sd", "0.25", "--N", "abc"], "--N"),
    "certify --N 10**11": (["certify", "good.png", "--noise-sd", "0.25", "--N", "100000000000"],
                           "N must be <= 10,000,000"),
    "certify --N0 0": (["certify", "good.png", "--noise-sd", "0.25", "--N0", "0"], "--N0"),
    "certify --noise-sd nan": (["certify", "good.png", "--noise-sd", "nan"], "noise_sd"),
    "certify --noise-sd 2": (["certify", "good.png", "--noise-sd", "2"], "noise_sd"),
    "certify --noise-sd abc": (["certify", "good.png", "--noise-sd", "abc"], "--noise-sd"),
    "certify --alpha 1": (["certify", "good.png", "--noise-sd", "0.25", "--alpha", "1"], "--alpha"),
    "certify --batch-size 10**6": (["certify", "good.png", "--noise-sd", "0.25", "--batch-size", "1000000"],
                                   "batch_size"),
    "certify --concurrency 5000": (["certify", "good.png", "--noise-sd", "0.25", "--concurrency", "5000"],
                                   "concurrency"),
    "certify --rate-limit 1e-9": (["certify", "good.png", "--noise-sd", "0.25", "--rate-limit", "1e-9"], "rate_limit"),
    "certify --attempts 1000": (["certify", "good.png", "--noise-sd", "0.25", "--attempts", "1000"], "retry"),
    "certify --max-cost nan": (["certify", "good.png", "--noise-sd", "0.25", "--max-cost", "nan"], "--max-cost"),
    "certify --seed -1": (["certify", "good.png", "--noise-sd", "0.25", "--seed", "-1"], "seed"),
    "certify --method best": (["certify", "good.png", "--noise-sd", "0.25", "--method", "best"], "--method"),
    "certify --radius -1": (["certify", "good.png", "--noise-sd", "0.25", "--method", "sequential", "--radius", "-1"],
                            "radius"),
    "certify --tolerance nan": (["certify", "good.png", "--noise-sd", "0.25", "--method", "sequential",
                                 "--tolerance", "nan"], "tolerance"),
    "certify --N0 with clean": (["certify", "good.png", "--noise-sd", "0.25", "--selection", "clean", "--N0", "5"],
                                "N0"),
    "certify --device bogus": (["certify", "good.png", "--noise-sd", "0.25", "--device", "bogus"], "device"),
    "certify text.png": (["certify", "notes.png", "--noise-sd", "0.25"], "notes.png"),
    "certify truncated.png": (["certify", "truncated.png", "--noise-sd", "0.25"], "truncated.png"),
    "certify bomb.png": (["certify", "bomb.png", "--noise-sd", "0.25"], "bomb.png"),
    "certify folder": (["certify", "a folder.png", "--noise-sd", "0.25"], "a folder.png"),
    "certify missing.png": (["certify", "missing.png", "--noise-sd", "0.25"], "missing.png"),
    "certify good then bad": (["certify", "good.png", "notes.png", "--noise-sd", "0.25"], "notes.png"),
    "predict --noise-sd -1": (["predict", "good.png", "--noise-sd", "-1"], "noise_sd"),
    "predict --N 0": (["predict", "good.png", "--noise-sd", "0.25", "--N", "0"], "--N"),
    "predict text.png": (["predict", "notes.png", "--noise-sd", "0.25"], "notes.png"),
    "predict --provider unknown": (["predict", "good.png", "--noise-sd", "0.25", "--provider", "no-such-provider"],
                                   "no-such-provider"),
}
LEGACY_CLI_CASES = {
    "import-legacy os.system": (["import-legacy", "pred_hist_0.pkl", "--api", "aws", "--noise-sd", "0.25"],
                                "refused to load the pickle"),
    "import-legacy colliding keys": (["import-legacy", "pred_hist_1.pkl", "--api", "aws", "--noise-sd", "0.25"],
                                     "share the hash value"),
    "import-legacy folder": (["import-legacy", ".", "--api", "aws", "--noise-sd", "0.25"], "refused to load the pickle"),
    "import-legacy --noise-sd 0": (["import-legacy", "pred_hist_1.pkl", "--api", "aws", "--noise-sd", "0"], "noise_sd"),
    "import-legacy --N0 0": (["import-legacy", "pred_hist_1.pkl", "--api", "aws", "--noise-sd", "0.25", "--N0", "0"],
                             "--N0"),
    "import-legacy --api bing": (["import-legacy", "pred_hist_1.pkl", "--api", "bing", "--noise-sd", "0.25"], "--api"),
    "import-legacy /dev/zero": (["import-legacy", "/dev/zero", "--api", "aws", "--noise-sd", "0.25"],
                                "is a character device"),
    "import-legacy missing": (["import-legacy", "missing.pkl", "--api", "aws", "--noise-sd", "0.25"], "missing.pkl"),
}


def _assert_one_line_failure(status, captured, phrase: str) -> None:
    """Exit status 2, nothing on stdout, no traceback, and stderr ends in one error line holding
    ``phrase`` (argparse prints its usage block before it; every other error is that line alone)."""
    from_argparse = isinstance(status, tuple)
    assert (status[1] if from_argparse else status) == 2, f"exit status {status}"
    assert captured.out == "", f"printed on stdout: {captured.out!r}"
    assert "Traceback" not in captured.err
    lines = captured.err.splitlines()
    assert lines and lines[-1].startswith("robust-api") and ": error: " in lines[-1], captured.err
    assert phrase in lines[-1], f"{phrase!r} not in {lines[-1]!r}"
    if from_argparse:
        assert lines[0].startswith("usage: robust-api") and all(not line.startswith("robust-api")
                                                                 for line in lines[:-1]), captured.err
    else:
        assert len(lines) == 1, captured.err


@pytest.mark.parametrize("name", sorted(CLI_CASES))
def test_hostile_cli_online_arguments(name, cli, capsys):
    run, folder = cli
    argv, phrase = CLI_CASES[name]
    status = run(argv[:1] + ONLINE + argv[1:])  # the case's own --provider, if any, comes last and wins
    _assert_one_line_failure(status, capsys.readouterr(), phrase)
    assert CLI_COUNTER.calls == 0, "a refused input reached the provider"
    assert not (folder / "logs").exists(), "a refused command created the log"


@pytest.mark.parametrize("name", sorted(LEGACY_CLI_CASES))
def test_hostile_cli_legacy_imports(name, cli, capsys):
    run, folder = cli
    argv, phrase = LEGACY_CLI_CASES[name]
    status = run(argv + ["--out", "imported/log.sqlite3"])
    _assert_one_line_failure(status, capsys.readouterr(), phrase)
    assert not (folder / "imported").exists() and not (folder / "MARKER").exists()


def test_the_cli_control_case_works(cli, capsys):
    """Control for the CLI cases: the same command line with good arguments certifies."""
    run, folder = cli
    assert run(["certify", "good.png", "--noise-sd", "0.25", "--N0", "2", "--N", "3", "--no-clean"] + ONLINE) == 0
    assert CLI_COUNTER.images == 5 and (folder / "logs" / "log.sqlite3").exists()


# ---------------------------------------------------------------------------------------
# FIFOs: a regression would block, so these run in a child interpreter
# ---------------------------------------------------------------------------------------
_FIFO_CHILD = r"""
import contextlib, io, json, sys
sys.path.insert(0, sys.argv[2])
import robust_api
from doubles import Counting
from robust_api.commands.cli import main
from robust_api.query_logs.legacy import import_legacy

root = sys.argv[1]
results = {}
counting = Counting()
api = robust_api.RobustAPI(counting, log=root + "/logs/log.sqlite3", seed=0)
for what, call in (
    ("certify", lambda: api.certify(root + "/image.png", noise_sd=0.25, N0=2, N=3)),
    ("predict", lambda: api.predict(root + "/image.png", noise_sd=0.25, N=3)),
    ("legacy", lambda: import_legacy(root + "/pred_hist_0.pkl", "aws", 0.25, out=root + "/imported.sqlite3")),
):
    try:
        call()
        results[what] = "ok"
    except Exception as exc:
        results[what] = type(exc).__name__
results["calls"] = counting.calls
err = io.StringIO()
with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
    results["cli_status"] = main(["certify", root + "/image.png", "--noise-sd", "0.25", "--log", root + "/cli/log.sqlite3"])
results["cli_stderr"] = err.getvalue()
print(json.dumps(results))
"""


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_fifos_in_place_of_an_image_or_a_pickle(tmp_path):
    os.mkfifo(tmp_path / "image.png")
    os.mkfifo(tmp_path / "pred_hist_0.pkl")
    try:
        done = subprocess.run([sys.executable, "-c", _FIFO_CHILD, str(tmp_path), str(Path(__file__).parents[1])],
                              capture_output=True, text=True, timeout=CHILD_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"a FIFO input blocked for {CHILD_TIMEOUT_S} s")
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads(done.stdout.splitlines()[-1])
    assert results["certify"] == results["predict"] == "InvalidImageError"
    assert results["legacy"] == "NotAQueryLogError" and results["calls"] == 0
    assert results["cli_status"] == 2 and len(results["cli_stderr"].splitlines()) == 1
    assert "not a regular file" in results["cli_stderr"]
    assert not (tmp_path / "cli").exists() and not (tmp_path / "imported.sqlite3").exists()
    # the library's log holds no call (it was created empty when the RobustAPI was built)
    with robust_api.open_log(tmp_path / "logs" / "log.sqlite3") as log:
        assert len(log) == 0


def test_the_corpus_holds_at_least_40_hostile_inputs():
    """The number of distinct hostile inputs above (each also run through several entry points)."""
    fifo_inputs = 2
    count = (len(IMAGE_FILES) + len(ARRAYS) + len(CONSTRUCTOR) + len(CALLS) + len(PICKLES) + len(CLI_CASES)
             + len(LEGACY_CLI_CASES) + fifo_inputs + 1)  # + the unknown provider name
    assert count >= 40, count


def test_an_unexpected_error_is_one_line_not_a_traceback(cli, capsys, monkeypatch):
    """A bug (here: a handler raising TypeError) ends in one line and exit status 1; -v shows
    the traceback."""
    import robust_api.commands.cli as command_line

    def broken(args):
        raise TypeError("something the SDK did not expect")

    monkeypatch.setattr(command_line, "_cmd_predict", broken)
    run, _ = cli
    assert run(["predict", "good.png", "--noise-sd", "0.25"]) == 1
    captured = capsys.readouterr()
    assert captured.err.splitlines() == [
        "robust-api: internal error (please report it): TypeError: something the SDK did not expect; "
        "run with -v for the traceback"
    ]
    assert run(["-v", "predict", "good.png", "--noise-sd", "0.25"]) == 1
    assert "Traceback" in capsys.readouterr().err
