"""Streaming certification: image sources (folders, globs, generators), ``certify_iter``'s two
orders, the O(parallel) memory bound, checks before any query, resuming an interrupted run
from the log, and the CLI's folders and glob patterns. Torch-free: a callable provider."""

from __future__ import annotations

import json
import os
import threading
import time
import weakref
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import robust_api
from robust_api import RobustAPI
from robust_api.commands.cli import main
from robust_api.engine.core import Engine
from robust_api.errors import BudgetExceededError, InvalidImageError, InvalidParameterError
from robust_api.image_sources import ImageSource, count_if_known, image_paths, iter_image_sources
from robust_api.providers import base as provider_base

SIGMA = 0.25
N0, N = 4, 16
PER_IMAGE = N0 + N


class Brightness:
    """A thread-safe callable provider: "dark" when an image's mean is below 0.5, else
    "light". ``delay_of(mean)`` seconds of latency per request (by the first image's clean
    brightness, so images can differ); ``fail_after``: raise once that many images were sent."""

    def __init__(self, delay_of=None, fail_after=None):
        self.delay_of = delay_of
        self.fail_after = fail_after
        self.lock = threading.Lock()
        self.calls = 0
        self.images = 0

    def __call__(self, batch):
        assert batch.dtype == np.float32 and batch.ndim == 4
        with self.lock:
            if self.fail_after is not None and self.images >= self.fail_after:
                raise RuntimeError("the provider went away")
            self.calls += 1
            self.images += len(batch)
        if self.delay_of is not None:
            time.sleep(self.delay_of(float(np.median(batch[0]))))
        return ["dark" if float(x.mean()) < 0.5 else "light" for x in batch]


def gray(value: int) -> np.ndarray:
    """An 8×8×3 uint8 image of one gray level (each level: its own digest and noise)."""
    return np.full((8, 8, 3), value, np.uint8)


def write_png(path: Path, value: int) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(gray(value)).save(path)
    return str(path)


def summary(cert):
    return (cert.label, cert.radius, cert.p_lower, dict(cert.counts), dict(cert.selection_counts),
            cert.logs.header.image_digest)


def api_for(provider, log, **options):
    return RobustAPI(provider, log=log, seed=0, name="streaming-test", **options)


@pytest.fixture
def folder(tmp_path):
    """Images in a folder tree, with files that are not images and hidden ones."""
    root = tmp_path / "images"
    write_png(root / "b.png", 200)
    write_png(root / "a.PNG", 30)
    write_png(root / "a-b.png", 90)
    write_png(root / "a" / "z.png", 60)
    write_png(root / "sub" / "c.png", 150)
    write_png(root / ".hidden.png", 10)
    write_png(root / ".cache" / "x.png", 20)
    (root / "notes.txt").write_text("not an image")
    return root


FOLDER_ORDER = ["a-b.png", "a.PNG", "a/z.png", "b.png", "sub/c.png"]  # by relative path, as strings


# -- image sources ---------------------------------------------------------------------------


def test_a_folder_is_its_image_files_sorted_by_relative_path(folder):
    for given in (folder, str(folder)):
        sources = list(iter_image_sources(given))
        assert [os.path.relpath(s.image, folder).replace(os.sep, "/") for s in sources] == FOLDER_ORDER
        assert [s.index for s in sources] == list(range(5))
        assert [s.name for s in sources] == [os.path.basename(p) for p in FOLDER_ORDER]
        assert count_if_known(given) == 5


def test_a_glob_pattern_is_its_matching_files_sorted(folder):
    (folder / "dir.png").mkdir()  # a folder that matches: not a file, left out
    pattern = str(folder / "**" / "*.png")
    paths = image_paths(pattern)
    assert paths == sorted(paths) and all(os.path.isfile(p) for p in paths)
    assert {os.path.basename(p) for p in paths} == {"b.png", "a-b.png", "z.png", "c.png"}  # not .PNG, not hidden
    sources = list(iter_image_sources(pattern))
    assert [s.image for s in sources] == paths and count_if_known(pattern) == 4


def test_sequences_and_generators(tmp_path):
    arrays = [gray(10), gray(20)]
    assert [(s.index, s.name) for s in iter_image_sources(arrays)] == [(0, None), (1, None)]
    assert count_if_known(arrays) == 2 and count_if_known(tuple(arrays)) == 2
    drawn = []

    def generate():
        for value in (10, 20, 30):
            drawn.append(value)
            yield str(write_png(tmp_path / f"{value}.png", value))

    assert count_if_known(generate()) is None and drawn == []
    sources = iter_image_sources(generate())
    assert drawn == [10]  # the first image only, to refuse an empty stream
    first = next(sources)
    assert first == ImageSource(0, str(tmp_path / "10.png"), "10.png") and drawn == [10]
    assert next(sources).index == 1 and drawn == [10, 20]  # one at a time
    assert [s.index for s in sources] == [2]


@pytest.mark.parametrize("images, phrase", [
    (gray(1), "a NumPy array"),
    (np.stack([gray(1), gray(2)]), r"list\(stack\)"),
    (b"\x89PNG", "bytes"),
    (7, "not iterable"),
    ([], "empty list"),
    ((), "empty tuple"),
    (iter([]), "yielded no image"),
])
def test_single_images_and_empty_collections_are_refused(images, phrase):
    with pytest.raises(InvalidParameterError, match=phrase):
        iter_image_sources(images)


def test_one_file_an_empty_folder_and_a_glob_matching_nothing_are_refused(tmp_path, folder):
    one = folder / "b.png"
    with pytest.raises(InvalidParameterError, match=r"neither a folder nor a glob pattern.*pass \[path\]"):
        iter_image_sources(str(one))
    with pytest.raises(InvalidParameterError, match="single Image|pass \\[image\\]"):
        iter_image_sources(Image.open(one))
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "readme.txt").write_text("x")
    with pytest.raises(InvalidParameterError, match="has no image files"):
        iter_image_sources(empty)
    with pytest.raises(InvalidParameterError, match="matched no file"):
        iter_image_sources(str(tmp_path / "nothing" / "*.png"))
    api = api_for(Brightness(), tmp_path / "log.sqlite3")
    with pytest.raises(InvalidParameterError, match="has no image files"):
        api.certify_many(empty, noise_sd=SIGMA)
    with pytest.raises(InvalidParameterError, match="matched no file"):
        api.certify_iter(str(tmp_path / "*.jpg"), noise_sd=SIGMA)
    with pytest.raises(InvalidParameterError, match="order must be one of"):
        api.certify_iter([gray(1)], noise_sd=SIGMA, order="fastest")


# -- certify_many and certify_iter on every kind of input --------------------------------------


def test_folder_glob_generator_and_list_give_the_same_certificates(tmp_path, folder):
    paths = [str(folder / p) for p in FOLDER_ORDER]
    reference = [summary(c) for c in api_for(Brightness(), False).certify_many(paths, SIGMA, N0, N, parallel=2)]
    provider = Brightness()
    api = api_for(provider, tmp_path / "log.sqlite3")
    by_folder = api.certify_many(folder, SIGMA, N0, N, parallel=3)
    assert [summary(c) for c in by_folder] == reference
    assert [c.logs.header.image_name for c in by_folder] == [os.path.basename(p) for p in FOLDER_ORDER]
    assert sum(c.queries for c in by_folder) == provider.images == 5 * PER_IMAGE
    # the same images again, from the same log with the same seed: every answer is reused
    by_pattern = api.certify_many(str(folder / "**" / "*.[pP][nN][gG]"), SIGMA, N0, N, parallel=3)
    generated = api.certify_many((p for p in paths), SIGMA, N0, N, parallel=3, names=list("vwxyz"), tag="gen")
    streamed = list(api.certify_iter(Path(folder), SIGMA, N0, N, parallel=2))
    for certs in (by_pattern, generated, streamed):
        assert [summary(c) for c in certs] == reference
        assert sum(c.queries for c in certs) == 0
    assert provider.images == 5 * PER_IMAGE
    assert [(c.logs.header.image_name, c.logs.header.tag) for c in generated] == [(n, "gen") for n in "vwxyz"]


def test_names_must_match_the_images(tmp_path):
    api = api_for(Brightness(), False)
    with pytest.raises(InvalidParameterError, match="names must be a list of 2 strings"):
        api.certify_many([gray(1), gray(2)], SIGMA, N0, N, names=["a"])
    with pytest.raises(InvalidParameterError, match="yielded more images"):
        api.certify_many(iter([gray(1), gray(2)]), SIGMA, N0, N, names=["a"])
    with pytest.raises(InvalidParameterError, match="yielded 1 images"):
        api.certify_many(iter([gray(1)]), SIGMA, N0, N, names=["a", "b"])


def test_order_input_and_order_completed(tmp_path):
    values = [30, 60, 90, 160, 200, 230]
    # the first images are the slowest: completion order usually differs from input order,
    # but nothing below depends on which thread finishes first
    delay = lambda median: 0.03 if median < 0.3 else 0.0  # noqa: E731
    reference = [summary(api_for(Brightness(), False).certify(gray(v), SIGMA, N0, N)) for v in values]
    api = api_for(Brightness(delay_of=delay), False, batch_size=4, concurrency=6)
    in_order = list(api.certify_iter([gray(v) for v in values], SIGMA, N0, N, parallel=3))
    assert [summary(c) for c in in_order] == reference  # exactly input order
    api = api_for(Brightness(delay_of=delay), False, batch_size=4, concurrency=6)
    pairs = list(api.certify_iter((gray(v) for v in values), SIGMA, N0, N, parallel=3, order="completed"))
    assert sorted(index for index, _ in pairs) == list(range(len(values)))
    for index, cert in pairs:
        assert summary(cert) == reference[index]


# -- memory: O(parallel) images, never the whole run -------------------------------------------


class LiveImages:
    """Counts the canonical images the engine decoded that are still alive (weak references)."""

    def __init__(self, monkeypatch):
        self.lock = threading.Lock()
        self.alive = 0
        self.most = 0
        self.decoded = 0
        check = Engine.check_image

        def counted(engine, image, noise_sd):
            canonical = check(engine, image, noise_sd)
            with self.lock:
                self.decoded += 1
                self.alive += 1
                self.most = max(self.most, self.alive)
            weakref.finalize(canonical, self._freed)
            return canonical

        monkeypatch.setattr(Engine, "check_image", counted)

    def _freed(self):
        with self.lock:
            self.alive -= 1


@pytest.mark.parametrize("order", ["completed", "input"])
def test_a_long_generator_is_drawn_only_as_slots_free_up(order, monkeypatch):
    parallel, total = 3, 40
    live = LiveImages(monkeypatch)
    drawn, received, ahead = [0], [0], []

    def images():
        for i in range(total):
            drawn[0] += 1
            ahead.append(drawn[0] - received[0])  # drawn but not yet given back as a certificate
            yield gray(40 + 4 * i)

    api = api_for(Brightness(delay_of=lambda median: 0.002), False, batch_size=8, concurrency=6)
    for item in api.certify_iter(images(), SIGMA, N0, N, parallel=parallel, order=order):
        received[0] += 1
        time.sleep(0.002)  # a consumer slower than nothing: the run waits for it, memory does not grow
    assert received[0] == drawn[0] == total
    window = parallel + 2 if order == "completed" else 2 * parallel + 1
    assert max(ahead) <= window
    assert live.decoded == total and live.most <= parallel + 2


def test_certify_many_checks_a_list_first_without_keeping_it(monkeypatch):
    parallel, total = 3, 30
    live = LiveImages(monkeypatch)
    provider = Brightness()
    certs = api_for(provider, False).certify_many([gray(40 + 5 * i) for i in range(total)], SIGMA, N0, N,
                                                  parallel=parallel)
    assert len(certs) == total and provider.images == total * PER_IMAGE
    assert live.decoded == 2 * total  # a checking pass, then each image again as it starts
    assert live.most <= parallel + 2  # never the whole list of float32 copies


# -- checks before any query, and failures ----------------------------------------------------


def test_a_bad_image_in_a_list_or_folder_is_refused_before_any_query(tmp_path, folder):
    provider = Brightness()
    log = tmp_path / "log.sqlite3"
    api = api_for(provider, log)
    bad = np.full((8, 8, 3), np.nan, np.float32)
    with pytest.raises(InvalidImageError):
        api.certify_many([gray(10), gray(20), gray(30), bad], SIGMA, N0, N, parallel=2)
    with pytest.raises(BudgetExceededError, match="for each of 5 images"):
        capped = api_for(provider, log, max_queries=3 * PER_IMAGE)
        capped.certify_many(str(folder / "**" / "*.[pP][nN][gG]"), SIGMA, N0, N)
    (folder / "zz-broken.png").write_bytes(b"not a png at all")
    with pytest.raises(InvalidImageError):
        api.certify_many(folder, SIGMA, N0, N, parallel=2)
    assert provider.calls == 0
    assert len(robust_api.open_log(log)) == 0


def test_a_bad_image_in_a_stream_stops_the_run(tmp_path):
    provider = Brightness()
    drawn = []

    def images():
        for i in range(30):
            drawn.append(i)
            yield np.full((8, 8, 3), np.nan, np.float32) if i == 4 else gray(40 + 5 * i)

    api = api_for(provider, tmp_path / "log.sqlite3")
    got = []
    with pytest.raises(InvalidImageError):
        for cert in api.certify_iter(images(), SIGMA, N0, N, parallel=2):
            got.append(cert)
    assert len(got) <= 4 and len(drawn) == 5  # nothing drawn after the bad image
    assert provider.images <= 4 * PER_IMAGE  # the images before it, at most
    assert all(c.logs.header.image_digest for c in got)


def test_closing_the_generator_stops_the_run(tmp_path):
    provider = Brightness(delay_of=lambda median: 0.002)
    api = api_for(provider, tmp_path / "log.sqlite3", batch_size=4)
    stream = api.certify_iter((gray(40 + 5 * i) for i in range(30)), SIGMA, N0, N, parallel=2)
    next(stream)
    stream.close()  # waits for the images in progress; none starts after
    sent = provider.images
    time.sleep(0.05)
    assert provider.images == sent < 30 * PER_IMAGE


# -- resuming an interrupted run --------------------------------------------------------------


@pytest.mark.parametrize("kind", ["list", "generator"])
def test_an_interrupted_run_resumes_from_the_log_paying_only_for_what_is_missing(kind, tmp_path):
    values = [30, 70, 110, 150, 190, 230]
    total = len(values) * PER_IMAGE
    images = lambda: [gray(v) for v in values] if kind == "list" else (gray(v) for v in values)  # noqa: E731
    log = tmp_path / "log.sqlite3"
    failing = Brightness(fail_after=50)
    with pytest.raises(Exception, match="the provider went away"):
        api_for(failing, log, batch_size=4, retry=1).certify_many(images(), SIGMA, N0, N, parallel=2)
    logged = sum(1 for call in robust_api.open_log(log) for record in call if record.error is None)
    assert 0 < logged == failing.images < total
    provider = Brightness()
    resumed = api_for(provider, log, batch_size=4).certify_many(images(), SIGMA, N0, N, parallel=2)
    assert sum(c.queries for c in resumed) == provider.images == total - logged
    uninterrupted = api_for(Brightness(), tmp_path / "fresh.sqlite3", batch_size=4).certify_many(
        images(), SIGMA, N0, N, parallel=2)
    assert sum(c.queries for c in uninterrupted) == total
    assert [summary(c) for c in resumed] == [summary(c) for c in uninterrupted]


# -- the command line ---------------------------------------------------------------------------

PROVIDER = "test-streaming-brightness"


@pytest.fixture
def registered(monkeypatch, tmp_path):
    made = []

    def factory(**options):
        fn = Brightness()
        made.append(fn)
        return robust_api.CallableProvider(fn, name=PROVIDER, batch_size=options.get("batch_size") or 64)

    monkeypatch.chdir(tmp_path)  # the default ./query_logs/ must not land in the repository
    robust_api.register_provider(PROVIDER, factory)
    yield made
    provider_base._REGISTRY.pop(PROVIDER, None)


def cli_certify(images, log, *extra):
    return main(["certify", *images, "--provider", PROVIDER, "--noise-sd", str(SIGMA), "--N0", str(N0), "--N", str(N),
                 "--seed", "0", "--log", str(log), "--no-clean", "--format", "json", *extra])


def test_cli_certifies_a_folder_and_a_quoted_glob(folder, tmp_path, registered, capsys):
    assert cli_certify([str(folder)], tmp_path / "folder.sqlite3") == 0
    rows = json.loads(capsys.readouterr().out)
    assert [row["image"] for row in rows] == [os.path.basename(p) for p in FOLDER_ORDER]
    assert all(row["queries"] == PER_IMAGE for row in rows)
    one = write_png(tmp_path / "one.png", 120)
    # a quoted pattern reaches the command as it is; mixed with a plain file
    pattern = str(folder / "**" / "*.png")
    assert cli_certify([one, pattern], tmp_path / "glob.sqlite3") == 0
    rows = json.loads(capsys.readouterr().out)
    assert [row["image"] for row in rows] == ["one.png"] + [os.path.basename(p) for p in image_paths(pattern)]
    assert len(rows) == 5


def test_cli_refuses_a_glob_matching_nothing_before_the_log_exists(tmp_path, registered, capsys):
    log = tmp_path / "log.sqlite3"
    assert cli_certify([str(tmp_path / "none" / "*.png")], log) == 2
    assert "matched no file" in capsys.readouterr().err
    assert not log.exists() and sum(p.images for p in registered) == 0


def test_cli_a_broken_file_in_a_folder_fails_its_own_row(folder, tmp_path, registered, capsys):
    (folder / "zz-broken.png").write_bytes(b"not a png")
    assert cli_certify([str(folder)], tmp_path / "log.sqlite3") == 1
    rows = json.loads(capsys.readouterr().out)
    assert [row["image"] for row in rows] == [os.path.basename(p) for p in FOLDER_ORDER] + ["zz-broken.png"]
    assert "error" in rows[-1] and all("error" not in row for row in rows[:-1])
