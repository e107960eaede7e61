"""Odd and hostile image inputs (issue 15, break 7): every one is either read correctly or
refused with InvalidImageError (ImageTooLargeError for size) before any query or log write.
A ``np.matrix`` used to crash the interpreter (segfault); Pillow's decompression-bomb error
escaped unwrapped."""

from __future__ import annotations

import hashlib
import os
import re
import sys

import numpy as np
import pytest

from robust_api import RobustAPI, open_log
from robust_api.errors import ImageTooLargeError, InvalidImageError
from robust_api.images import as_image, downscaled_size, image_digest


@pytest.fixture
def counting(tmp_path):
    """(api, calls, log path): a callable provider that records the batch sizes it was sent."""
    calls = []
    path = tmp_path / "q.sqlite3"
    api = RobustAPI(lambda b: calls.append(len(b)) or ["A"] * len(b), log=path, seed=0)
    return api, calls, path


def assert_refused(api, calls, path, image, error=InvalidImageError, match=None):
    for method in (api.certify, api.predict):
        with pytest.raises(error, match=None if match is None else re.escape(match)):
            method(image, noise_sd=0.25)
    assert calls == [] and len(list(open_log(path))) == 0


def old_digest(image: np.ndarray) -> str:
    """The first release's image digest (a byte copy via tobytes), for comparison."""
    hasher = hashlib.sha256()
    hasher.update(("robust_api.image/1|" + "x".join(map(str, image.shape)) + "|").encode())
    hasher.update(np.ascontiguousarray(image, dtype=np.float32).tobytes())
    return hasher.hexdigest()


GRAY = np.linspace(0, 1, 48, dtype=np.float32).reshape(6, 8)
RGB8 = np.arange(6 * 8 * 3, dtype=np.uint8).reshape(6, 8, 3)


# ------------------------------------------------------------------- inputs read correctly


@pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")
def test_np_matrix_is_read_as_a_plain_array(counting):
    """It used to segfault (np.matrix keeps 2-D through indexing); now it is a grayscale image."""
    api, calls, _ = counting
    matrix = np.matrix(GRAY)
    out = as_image(matrix)
    assert type(out) is np.ndarray and out.shape == (6, 8, 1) and np.array_equal(out[:, :, 0], GRAY)
    assert np.array_equal(as_image(np.matrix(RGB8[:, :, 0])), as_image(RGB8[:, :, 0]))
    cert = api.certify(matrix, noise_sd=0.25, N0=1, N=2)
    assert cert.n == 2 and sum(calls) == 3


@pytest.mark.parametrize("dtype", [">f4", ">f8", ">f2", ">u2", "<f8", "<u2"])
def test_either_byte_order_gives_the_same_image_and_digest(dtype):
    base = (GRAY * 65535).astype(np.uint16) if dtype[1] == "u" else GRAY
    swapped = base.astype(dtype)
    assert swapped.dtype.byteorder in "<>=|"
    out = as_image(swapped)
    assert out.dtype == np.float32 and out.dtype.isnative
    np.testing.assert_array_equal(out, as_image(base.astype(swapped.dtype.newbyteorder("="))))
    assert image_digest(out) == image_digest(as_image(base.astype(swapped.dtype.newbyteorder("="))))


@pytest.mark.parametrize("view", ["reversed_rows", "reversed_columns", "every_other", "transposed", "fortran",
                                  "channels_reversed"])
def test_strided_views_equal_their_contiguous_copies(view):
    rgb = np.random.default_rng(0).random((9, 12, 3), dtype=np.float32)
    array = {
        "reversed_rows": rgb[::-1],
        "reversed_columns": rgb[:, ::-1],
        "every_other": rgb[::2, ::3],
        "transposed": np.transpose(rgb, (1, 0, 2)),
        "fortran": np.asfortranarray(rgb),
        "channels_reversed": rgb[:, :, ::-1],
    }[view]
    out = as_image(array)
    assert out.flags.c_contiguous
    np.testing.assert_array_equal(out, np.ascontiguousarray(array))
    assert image_digest(out) == old_digest(np.ascontiguousarray(array))


def test_read_only_memmap_and_subclass_inputs(tmp_path):
    read_only = RGB8.copy()
    read_only.setflags(write=False)
    assert np.array_equal(as_image(read_only), as_image(RGB8.copy()))
    path = tmp_path / "pixels.dat"
    mapped = np.memmap(path, dtype=np.uint8, mode="w+", shape=RGB8.shape)
    mapped[:] = RGB8
    mapped.flush()
    reopened = np.memmap(path, dtype=np.uint8, mode="r", shape=RGB8.shape)
    assert np.array_equal(as_image(reopened), as_image(RGB8))

    class Hostile(np.ndarray):  # every method a library might call raises: none is used
        def __getitem__(self, key):
            raise RuntimeError("__getitem__")

        def __array__(self, *args, **kwargs):
            raise RuntimeError("__array__")

        def astype(self, *args, **kwargs):
            raise RuntimeError("astype")

        @property
        def ndim(self):
            raise RuntimeError("ndim")

    assert np.array_equal(as_image(RGB8.view(Hostile)), as_image(RGB8))


def test_masked_array_without_masked_values_is_its_data():
    assert np.array_equal(as_image(np.ma.masked_array(GRAY, mask=False)), as_image(GRAY))
    assert np.array_equal(as_image(np.ma.masked_array(GRAY)), as_image(GRAY))


def test_digest_is_unchanged_and_computed_without_a_copy():
    image = as_image(RGB8)
    assert image_digest(image) == old_digest(image)
    assert image_digest(image[:, ::-1]) == old_digest(image[:, ::-1])  # a view is hashed as its values
    assert image_digest(image.astype(np.float64)) == old_digest(image)
    # the conversion is exactly astype(float32) / 255 (the logs' digests depend on it)
    assert np.array_equal(image, RGB8.astype(np.float32) / np.float32(255.0))
    sixteen = (GRAY * 65535).astype(np.uint16)
    assert np.array_equal(as_image(sixteen)[:, :, 0], sixteen.astype(np.float32) / np.float32(65535.0))


# ------------------------------------------------------------------------ inputs refused


BAD = {
    "matrix_4d_like_batch": (np.zeros((2, 8, 8, 1), np.float32), "4-D"),
    "zero_d": (np.float32(0.5), "expected a NumPy array"),  # a NumPy scalar is not an array
    "zero_d_array": (np.array(0.5, np.float32), "must be [H, W] or [H, W, C]"),
    "32_dims": (np.zeros((1,) * 32, np.float32), "must be [H, W] or [H, W, C]"),
    "bool": (np.ones((8, 8), bool), "unsupported dtype bool"),
    "int64": (np.zeros((8, 8), np.int64), "unsupported dtype int64"),
    "uint32": (np.zeros((8, 8), np.uint32), "unsupported dtype uint32"),
    "uint64_big_endian": (np.zeros((8, 8), ">u8"), "unsupported dtype uint64"),
    "int16_big_endian": (np.zeros((8, 8), ">i2"), "unsupported dtype >i2"),
    "complex": (np.zeros((8, 8), np.complex128), "unsupported dtype complex128"),
    "object": (np.full((8, 8), 0.5, dtype=object), "unsupported dtype object"),
    "longdouble": (np.zeros((8, 8), np.longdouble), "unsupported dtype"),
    "structured_rgb": (np.zeros((8, 8), dtype=[("r", "u1"), ("g", "u1"), ("b", "u1")]), "unsupported dtype"),
    "datetime": (np.zeros((8, 8), "datetime64[s]"), "unsupported dtype datetime64"),
    "unicode": (np.full((8, 8), "a"), "unsupported dtype <U1"),
    "bytes_void": (np.zeros((8, 8), "V4"), "unsupported dtype"),
    "masked_values": (np.ma.masked_array(GRAY, mask=GRAY > 0.5), "masked values"),
    "nan_big_endian": (np.full((8, 8), np.nan, ">f8"), "NaN or infinite"),
    "above_one_big_endian": (np.full((8, 8), 2.0, ">f4"), "must lie in [0, 1]"),
    "matrix_of_objects": (np.matrix([[object()]]), "unsupported dtype object"),
    "nested_list": ([[0.1, 0.2]], "expected a NumPy array"),
    "torch_like": (type("T", (), {"detach": lambda self: None, "__array__": lambda self: GRAY})(), "torch tensor"),
}


@pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")
@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_inputs_are_refused_before_any_query(name, counting):
    image, match = BAD[name]
    api, calls, path = counting
    assert_refused(api, calls, path, image, InvalidImageError, match)


def test_huge_broadcast_array_is_refused_from_its_shape():
    """A zero-stride view can claim 10¹⁰ pixels with no memory: refused before any conversion."""
    huge = np.broadcast_to(np.zeros((1, 1, 3), np.uint8), (100_000, 100_000, 3))
    with pytest.raises(ImageTooLargeError, match="10,000,000,000 pixels"):
        as_image(huge)
    with pytest.raises(ImageTooLargeError):
        as_image(huge, max_pixels=10**9)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_fifo_path_is_refused_without_blocking(tmp_path, counting):
    api, calls, path = counting
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)  # opening it for reading would block forever without a writer
    assert_refused(api, calls, path, fifo, InvalidImageError, "not a regular file")


def test_odd_paths_are_refused(tmp_path, counting):
    api, calls, path = counting
    assert_refused(api, calls, path, str(tmp_path / "a\x00b.png"), InvalidImageError, "NUL")
    assert_refused(api, calls, path, tmp_path, InvalidImageError, "directory")
    assert_refused(api, calls, path, tmp_path / "missing.png", InvalidImageError, "not found")


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_corrupt_files_of_several_formats_are_invalid_image_errors(tmp_path, counting):
    from PIL import Image

    api, calls, path = counting
    rng = np.random.default_rng(0)
    for fmt, suffix in (("PNG", "png"), ("JPEG", "jpg"), ("GIF", "gif"), ("BMP", "bmp"), ("TIFF", "tiff"),
                        ("WEBP", "webp")):
        good = tmp_path / f"good.{suffix}"
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(good, format=fmt)
        data = good.read_bytes()
        for cut, bad_bytes in (("half", data[: len(data) // 2]), ("header", data[:20]),
                               ("flipped", data[:30] + bytes(b ^ 0xFF for b in data[30:60]) + data[60:])):
            bad = tmp_path / f"bad_{cut}.{suffix}"
            bad.write_bytes(bad_bytes)
            try:
                out = as_image(bad)
            except InvalidImageError:
                continue  # refused with our error: fine
            # a decoder that tolerates the damage must still return a valid canonical image
            assert out.dtype == np.float32 and out.ndim == 3 and 0 <= out.min() and out.max() <= 1
    assert calls == []


def test_decompression_bomb_error_and_warning_are_typed(tmp_path, monkeypatch, counting):
    from PIL import Image

    api, calls, path = counting
    image = tmp_path / "bomb.png"
    Image.new("L", (100, 100)).save(image)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 10,000 pixels > 2 × 1000: Pillow's error
    assert_refused(api, calls, path, image, ImageTooLargeError, "decompression-bomb")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 6000)  # 10,000 > 6000: Pillow's warning, now our error
    assert_refused(api, calls, path, image, ImageTooLargeError, "MAX_IMAGE_PIXELS")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 20000)
    assert as_image(image).shape == (100, 100, 1)


def test_pil_image_size_is_checked_before_its_pixels_are_converted():
    from PIL import Image

    big = Image.new("RGB", (300, 200))
    with pytest.raises(ImageTooLargeError, match="200×300 = 60,000 pixels"):
        as_image(big, max_pixels=50_000)
    assert as_image(big, max_pixels=50_000, downscale=True).shape[:2] == downscaled_size(200, 300, 50_000)


@pytest.mark.parametrize("kind", ["uint8_rgb", "uint16_gray", "float_rgb", "png_file", "jpeg_file", "pil_16bit"])
def test_downscale_keeps_the_aspect_ratio_and_the_value_range(kind, tmp_path):
    from PIL import Image

    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (90, 120, 3), dtype=np.uint8)
    source = {
        "uint8_rgb": lambda: rgb,
        "uint16_gray": lambda: rng.integers(0, 65536, (90, 120), dtype=np.uint16),
        "float_rgb": lambda: rgb.astype(np.float64) / 255.0,
        "png_file": lambda: (Image.fromarray(rgb).save(tmp_path / "x.png"), tmp_path / "x.png")[1],
        "jpeg_file": lambda: (Image.fromarray(rgb).save(tmp_path / "x.jpg", quality=95), tmp_path / "x.jpg")[1],
        "pil_16bit": lambda: Image.fromarray(rng.integers(0, 65536, (90, 120), dtype=np.uint16)),
    }[kind]()
    out = as_image(source, max_pixels=1200, downscale=True)
    assert out.shape[:2] == (30, 40) and out.dtype == np.float32 and out.flags.c_contiguous
    assert 0.0 <= out.min() and out.max() <= 1.0
    # a box filter averages: the mean brightness is kept (the JPEG only up to its own loss)
    full = as_image(source, max_pixels=None)
    assert abs(float(out.mean()) - float(full.mean())) < 0.02
    assert as_image(source, max_pixels=10_800).shape[:2] == (90, 120)  # at the limit: untouched


def test_downscaled_size_never_exceeds_the_limit():
    for height, width, limit in ((1000, 1000, 784), (6000, 4000, 50_000_000), (7, 100_000, 1000), (3, 5, 14),
                                 (1, 10**6, 10), (99_999, 3, 99_998)):
        h, w = downscaled_size(height, width, limit)
        assert 1 <= h <= height and 1 <= w <= width and (h * w <= limit or (h, w) == (1, 1))
    assert downscaled_size(1000, 1000, 784) == (28, 28)
    assert downscaled_size(10, 10, 100) == (10, 10)


def test_max_pixels_argument_is_validated():
    for bad in (0, -1, 2.5, True, "10"):
        with pytest.raises(InvalidImageError, match="max_pixels"):
            as_image(GRAY, max_pixels=bad)
    assert as_image(GRAY, max_pixels=None).shape == (6, 8, 1)


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX permissions")
def test_unreadable_file_is_an_invalid_image_error(tmp_path):
    from PIL import Image

    path = tmp_path / "locked.png"
    Image.new("L", (4, 4)).save(path)
    path.chmod(0)
    try:
        if os.access(path, os.R_OK):  # running as root: permissions do not apply
            pytest.skip("the file stays readable for this user")
        with pytest.raises(InvalidImageError, match="cannot read"):
            as_image(path)
    finally:
        path.chmod(0o600)


# ------------------------------------------------- layouts, tensors and encoded bytes (issue 18)


def _png_bytes(array: np.ndarray, fmt: str = "PNG") -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.mark.parametrize("picture", [RGB8, GRAY[:, :, None], (GRAY * 255).astype(np.uint8)[:, :, None]],
                         ids=["rgb_uint8", "gray_float", "gray_uint8"])
def test_channels_first_and_channels_last_give_the_same_image_and_digest(picture):
    hwc = as_image(picture)
    chw = np.transpose(picture, (2, 0, 1))  # a strided view, as np.transpose returns
    for variant in (chw, np.ascontiguousarray(chw), chw[None], picture[None]):
        out = as_image(variant)
        assert out.shape == hwc.shape and out.flags.c_contiguous
        assert np.array_equal(out, hwc) and image_digest(out) == image_digest(hwc)


def test_the_layout_rule_for_ambiguous_and_channels_first_shapes(caplog):
    import logging

    with caplog.at_level(logging.INFO, logger="robust_api.images"):
        assert as_image(np.zeros((3, 5, 3), np.uint8)).shape == (3, 5, 3)  # both fit: read as [H, W, C]
    assert "could be [H, W, C] or [C, H, W]" in caplog.text
    assert as_image(np.zeros((1, 5, 1), np.uint8)).shape == (1, 5, 1)
    assert as_image(np.zeros((3, 5, 4), np.uint8)).shape == (5, 4, 3)  # first 3, last 4: channels first
    assert as_image(np.zeros((1, 7, 5), np.uint8)).shape == (7, 5, 1)
    assert as_image(np.zeros((1, 1, 7, 5), np.uint8)).shape == (7, 5, 1)  # batch of one, gray, channels first


@pytest.mark.parametrize("shape, match", [
    ((2, 3, 8, 8), ["4-D array", "a batch of 2 images", "one image [H, W, C] at a time"]),
    ((4, 8, 8), ["4 channels", "img[:3]"]),
    ((8, 8, 4), ["4 channels", "img[..., :3]"]),
    ((2, 8, 8), ["1 or 3 channels", "[C, H, W]"]),
    ((1, 2, 3, 8, 8), ["must be [H, W] or [H, W, C]"]),
])
def test_shapes_that_are_not_one_image_are_refused_with_the_fix(shape, match):
    with pytest.raises(InvalidImageError) as excinfo:
        as_image(np.zeros(shape, np.float32))
    for phrase in match:
        assert phrase in str(excinfo.value), (phrase, str(excinfo.value))


def test_torch_tensors_in_every_layout_give_the_arrays_image():
    torch = pytest.importorskip("torch")
    expected = as_image(RGB8)
    chw = torch.from_numpy(RGB8).permute(2, 0, 1)  # uint8 [3, H, W], as torchvision reads images
    scaled = chw.float() / 255
    for tensor in (chw, chw.contiguous(), chw[None], torch.from_numpy(RGB8), scaled, scaled.requires_grad_()):
        out = as_image(tensor)
        assert out.dtype == np.float32 and out.flags.c_contiguous
        assert np.array_equal(out, expected) and image_digest(out) == image_digest(expected)
    assert image_digest(as_image(scaled.detach().double())) == image_digest(expected)
    half = scaled.detach().bfloat16()  # NumPy has no bfloat16: widened exactly to float32
    assert np.array_equal(as_image(half), half.float().permute(1, 2, 0).numpy())
    gray = torch.rand(1, 9, 7)
    assert np.array_equal(as_image(gray)[:, :, 0], gray[0].numpy())


def test_torch_tensors_are_checked_like_arrays_and_before_any_copy():
    torch = pytest.importorskip("torch")
    for tensor, phrase in ((torch.zeros(2, 3, 8, 8), "a batch of 2 images"),
                           (torch.full((3, 8, 8), 2.0), "must lie in [0, 1]"),
                           (torch.zeros(8, 8, dtype=torch.int64), "unsupported dtype int64"),
                           (torch.zeros(8, 8, 3).to_sparse(), "to_dense()")):
        with pytest.raises(InvalidImageError, match=re.escape(phrase)):
            as_image(tensor)
    # the size comes from the shape: a meta tensor has no data to copy, and is refused by size first
    with pytest.raises(ImageTooLargeError, match="10,000,000,000 pixels"):
        as_image(torch.empty(3, 100_000, 100_000, device="meta"))
    with pytest.raises(InvalidImageError, match="meta"):
        as_image(torch.empty(3, 8, 8, device="meta"))


def test_a_tensor_is_recognised_without_importing_torch():
    """The check looks torch up in sys.modules only: without torch imported, no tensor can exist."""
    import subprocess

    code = ("import sys; from robust_api.images import _is_torch_tensor; import numpy as np; "
            "assert not _is_torch_tensor(np.zeros(3)) and not _is_torch_tensor(b'x'); "
            "assert 'torch' not in sys.modules; print('ok')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "ok", done.stderr


def test_api_certifies_a_torch_tensor_like_the_same_array(counting):
    torch = pytest.importorskip("torch")
    api, calls, _ = counting
    from_array = api.certify(RGB8, noise_sd=0.25, N0=2, N=3)
    from_tensor = api.certify(torch.from_numpy(RGB8).permute(2, 0, 1), noise_sd=0.25, N0=2, N=3)
    assert from_tensor.logs.header.image_digest == from_array.logs.header.image_digest
    assert from_tensor.queries == 0  # the same picture, seed and σ: every answer reused from the log


@pytest.mark.parametrize("kind", ["bytes", "bytearray", "memoryview"])
def test_encoded_png_bytes_are_the_files_image(kind, tmp_path):
    data = _png_bytes(RGB8)
    path = tmp_path / "x.png"
    path.write_bytes(data)
    value = {"bytes": data, "bytearray": bytearray(data), "memoryview": memoryview(data)}[kind]
    out = as_image(value)
    assert np.array_equal(out, as_image(path)) and np.array_equal(out, as_image(RGB8))
    assert as_image(_png_bytes((GRAY * 255).astype(np.uint8))).shape == (6, 8, 1)
    assert as_image(_png_bytes(RGB8, "JPEG")).shape == (6, 8, 3)


def test_encoded_bytes_are_size_checked_from_the_header():
    from PIL import Image

    import io

    buffer = io.BytesIO()
    Image.new("L", (300, 200)).save(buffer, format="PNG")
    with pytest.raises(ImageTooLargeError, match="200×300 = 60,000 pixels"):
        as_image(buffer.getvalue(), max_pixels=50_000)
    assert as_image(buffer.getvalue(), max_pixels=50_000, downscale=True).shape[:2] == downscaled_size(200, 300, 50_000)


def test_bad_bytes_are_refused_with_a_typed_error_before_any_query(counting, tmp_path):
    api, calls, path = counting
    data = _png_bytes(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    named = tmp_path / "named.png"
    named.write_bytes(data)
    for bad, phrase in ((b"", "empty"),
                        (b"not an image at all", "cannot decode the 19 image bytes"),
                        (data[: len(data) * 3 // 5], "truncated or corrupt"),  # the header is fine, the pixels not
                        (bytes(range(256)) * 4, "np.frombuffer(data, np.uint8)"),
                        (os.fsencode(named), "pass the path as a str or pathlib.Path"),
                        (memoryview(np.zeros((4, 4), np.float32)), "np.asarray(view)")):
        assert_refused(api, calls, path, bad, InvalidImageError, phrase)
