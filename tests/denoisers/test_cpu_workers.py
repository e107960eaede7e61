"""CPU workers (robust_api.torch_utils.CpuWorkers): data-parallel forward passes with one torch
thread per worker, the same bits as one pass with torch's own threads, and torch's thread
settings left as they were for everyone else.

Each test builds its own pool of 2 workers (or patches ``cpu_workers`` to return it), so they
run the parallel path on any machine, one core or many.
"""

import threading

import numpy as np
import pytest
import torch
from torch import nn

import robust_api.torch_utils as torch_utils
from robust_api.denoisers import MemNet, architecture_names, build_architecture, load_denoiser
from robust_api.models.fashion_mnist import FashionMNISTCNN
from robust_api.providers.local import LocalProvider
from robust_api.torch_utils import CpuWorkers, ModuleDenoiser


@pytest.fixture(scope="module")
def two_workers():
    workers = CpuWorkers(2)
    yield workers
    workers.stop()


@pytest.fixture
def patched_workers(two_workers, monkeypatch):
    """cpu_workers() returns the 2-worker pool, whatever this machine's core count."""
    monkeypatch.setattr(torch_utils, "cpu_workers", lambda: two_workers)
    return two_workers


def _serial_twin(runner: ModuleDenoiser) -> ModuleDenoiser:
    twin = ModuleDenoiser(runner.module, device="cpu")
    twin.parallel = False
    return twin


def _noisy(shape, seed=0, clipped=False):
    images = np.random.default_rng(seed).random(shape, dtype=np.float32) * np.float32(1.4) - np.float32(0.2)
    return np.clip(images, 0, 1) if clipped else images


@pytest.mark.parametrize("name", ["fashion-mnist-dncnn-0.25", "fashion-mnist-dncnn-mse-0.12", "photonet-stab-0.25"])
def test_shipped_denoisers_give_the_same_bits_on_the_workers(name, patched_workers):
    module = load_denoiser(name, device="cpu")
    runner = ModuleDenoiser(module, device="cpu")
    assert runner.parallel
    serial = _serial_twin(runner)
    shape = (1, 28, 28, 1) if module.image_channels == 1 else (1, 40, 40, 3)
    for seed, count in enumerate((1, 2, 3, 7, 20, 33, 100)):
        images = _noisy((count, *shape[1:]), seed, clipped=runner.noisy_input == "clipped")
        for each in (runner, serial):
            each.set_noise_sd(0.25)
        assert np.array_equal(runner(images), serial(images)), (name, count)


@pytest.mark.parametrize("arch", [a for a in architecture_names() if a not in ("nl-means", "memnet")])
def test_every_parallel_architecture_gives_the_same_bits(arch, patched_workers):
    torch.manual_seed(0)
    module = build_architecture(arch, image_channels=3)
    module.noise_sd = 0.25
    runner = ModuleDenoiser(module, device="cpu")
    assert runner.parallel, arch
    images = _noisy((9, 32, 32, 3), seed=3)
    runner.set_noise_sd(0.25)
    assert np.array_equal(runner(images), _serial_twin(runner)(images)), arch


def test_memnet_and_plain_modules_stay_in_the_callers_thread(patched_workers):
    assert not ModuleDenoiser(MemNet(image_channels=1, channels=8, num_memory_blocks=1, num_residual_blocks=1)).parallel
    plain = nn.Conv2d(1, 1, 3, padding=1)
    assert not ModuleDenoiser(plain, device="cpu").parallel
    plain.parallel_forward = True  # a user's module opts in
    assert ModuleDenoiser(plain, device="cpu").parallel


def test_batches_are_cut_into_equal_chunks_one_per_worker_turn(patched_workers):
    module = load_denoiser("fashion-mnist-dncnn-0.25", device="cpu")
    sizes, threads = [], set()
    lock = threading.Lock()

    def record(_module, args):
        with lock:
            sizes.append(args[0].shape[0])
            threads.add((threading.current_thread().name, torch.get_num_threads()))

    handle = module.register_forward_pre_hook(record)
    try:
        runner = ModuleDenoiser(module, device="cpu")
        for count, expected in ((20, [10, 10]), (100, [25] * 4), (65, [17, 16, 16, 16]), (3, [3]), (1, [1])):
            sizes.clear()
            runner(_noisy((count, 28, 28, 1), clipped=True))
            assert sorted(sizes, reverse=True) == expected, count
    finally:
        handle.remove()
    # the chunks ran on the workers, each with one torch thread (the single image: in this thread);
    # no chunk is a single image cut from a larger batch (other kernels: other bits)
    assert {count for name, count in threads if name.startswith("robust-api-torch-")} == {1}


def test_a_small_activation_budget_keeps_chunks_small_or_runs_in_this_thread(patched_workers):
    module = load_denoiser("fashion-mnist-dncnn-0.25", device="cpu")
    per_image = 28 * 28 * torch_utils.activation_bytes_per_pixel(module)
    sizes = []
    handle = module.register_forward_pre_hook(lambda _m, args: sizes.append(args[0].shape[0]))
    images = _noisy((20, 28, 28, 1), clipped=True)
    try:
        ModuleDenoiser(module, device="cpu", activation_bytes=4 * per_image)(images)  # 2 workers × 2 images
        assert sorted(sizes) == [2] * 10
        sizes.clear()
        ModuleDenoiser(module, device="cpu", activation_bytes=per_image)(images)  # one image at a time, here
        assert sizes == [1] * 20
    finally:
        handle.remove()


def test_an_error_in_a_worker_reaches_the_caller(two_workers):
    def fail_on_three(item):
        if item == 3:
            raise ValueError("three")
        return item * 2

    assert two_workers.map(lambda item: item * 2, range(5)) == [0, 2, 4, 6, 8]
    with pytest.raises(ValueError, match="three"):
        two_workers.map(fail_on_three, range(5))
    assert two_workers.map(lambda _: torch.is_inference_mode_enabled(), [None]) == [True]


def test_workers_leave_torch_thread_settings_as_they_were():
    before = torch.get_num_threads()
    seen = {}

    def fresh_thread():
        seen["count"] = torch.get_num_threads()

    workers = CpuWorkers(2)
    try:
        assert workers.map(lambda _: torch.get_num_threads(), range(4)) == [1, 1, 1, 1]
        assert torch.get_num_threads() == before
        thread = threading.Thread(target=fresh_thread)
        thread.start()
        thread.join()
        assert seen["count"] == before  # the default for new threads was restored
    finally:
        workers.stop()


def test_one_usable_thread_means_no_workers():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert torch_utils.usable_cpus() == 1 and torch_utils.cpu_workers() is None
    finally:
        torch.set_num_threads(before)


def test_batch_chunks_are_even_and_never_a_single_image():
    from robust_api.torch_utils import batch_chunks

    for count in range(1, 200):
        for chunks in (1, 2, 3, 4, 8):
            spans = batch_chunks(count, chunks)
            sizes = [stop - start for start, stop in spans]
            assert spans[0][0] == 0 and spans[-1][1] == count and sum(sizes) == count
            assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
            assert len(spans) <= chunks and max(sizes) - min(sizes) <= 1
            assert count == 1 or min(sizes) >= 2


def test_a_single_image_chunk_would_change_the_bits():
    """Why batch_chunks never makes one: oneDNN runs a batch of one with other kernels."""
    module = load_denoiser("fashion-mnist-dncnn-0.25", device="cpu")
    x = torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        whole = module(x)
        assert torch.equal(torch.cat([module(x[:2]), module(x[2:])]), whole)
        if torch.equal(torch.cat([module(x[:3]), module(x[3:])]), whole):
            pytest.skip("this CPU's kernels give a batch of one the same bits")


def test_the_bundled_classifier_on_the_workers_gives_the_same_answers(patched_workers, monkeypatch):
    provider = LocalProvider(device="cpu")
    monkeypatch.setattr("robust_api.providers.local.cpu_workers", lambda: patched_workers)
    threads = set()
    provider.model.features.register_forward_pre_hook(lambda *_: threads.add(threading.current_thread().name))
    rng = np.random.default_rng(0)
    for count in (*range(1, 14), 20, 37, 100):  # every batch size: the bits of one pass with torch's threads
        images = rng.random((count, 28, 28, 1), dtype=np.float32)
        assert provider.send(images) == provider._classify(images), count
    assert any(name.startswith("robust-api-torch-") for name in threads)


def test_the_fast_max_pool_is_exact_and_trains_as_before():
    torch.manual_seed(0)
    model = FashionMNISTCNN().eval()
    reference = FashionMNISTCNN().eval()
    reference.load_state_dict(model.state_dict())
    reference.features[2], reference.features[4] = nn.MaxPool2d(2), nn.MaxPool2d(2)
    x = torch.rand(64, 1, 28, 28)
    x[0, 0, 5, 5] = float("nan")
    with torch.inference_mode():
        fast, slow = model(x), reference(x)
    assert torch.equal(fast[1:], slow[1:]) and torch.equal(torch.isnan(fast[0]), torch.isnan(slow[0]))
    pooled = model.features[2]
    odd = torch.rand(2, 3, 5, 7)
    assert torch.equal(pooled(odd), nn.functional.max_pool2d(odd, 2))
    model.train()
    x = torch.rand(4, 1, 28, 28, requires_grad=True)
    model(x).sum().backward()
    assert x.grad is not None and x.grad.shape == x.shape


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs fork")
def test_a_forked_child_starts_its_own_workers():
    """The parent's worker threads do not exist in a forked child: it must not wait for them."""
    import multiprocessing

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        parent = torch_utils.cpu_workers()
        assert parent is not None and parent.map(lambda x: x + 1, [1]) == [2]
        context = multiprocessing.get_context("fork")
        with context.Pool(1) as pool:
            result = pool.apply_async(_map_in_child)
            assert result.get(timeout=120) == [2, 3]
    finally:
        torch.set_num_threads(before)


def _map_in_child():
    torch.set_num_threads(2)
    workers = torch_utils.cpu_workers()
    return workers.map(lambda x: x + 1, [1, 2])
