"""certify_many(engine="ray") on a local Ray cluster: the same certificates as in process,
one budget and one rate limit for every worker, shards merged into one log, and a killed
worker's images redone elsewhere without paying twice (issue 19)."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

import robust_api
from robust_api.errors import BudgetExceededError, InvalidParameterError, MissingDependencyError
from robust_api.providers.simulated import read_send_times

ray = pytest.importorskip("ray", reason="the [ray] extra is not installed")

SIGMA, N0, N, ALPHA, SEED = 0.25, 10, 40, 0.001, 5


def block_images(count: int, seed: int = 1) -> list[np.ndarray]:
    """16×16 images of four flat coloured blocks: most certify, some abstain."""
    rng = np.random.default_rng(seed)
    return [np.kron(rng.random((2, 2, 3)), np.ones((8, 8, 1))).astype(np.float32) for _ in range(count)]


@pytest.fixture(scope="module")
def cluster():
    """One local Ray cluster for the module (2 CPUs: 2 workers)."""
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    yield
    ray.shutdown()


def in_process(images, **options) -> list:
    api = robust_api.RobustAPI("simulated", latency_s=0, log=False, seed=SEED, **options)
    return api.certify_many(images, SIGMA, N0, N, ALPHA, seed=SEED)


def same_certificates(ray_results, local_results) -> None:
    assert len(ray_results) == len(local_results)
    for got, want in zip(ray_results, local_results):
        assert (got.label, got.counts, got.radius, got.p_lower) == (want.label, want.counts, want.radius, want.p_lower)


def paid_records(paths) -> int:
    return sum(1 for path in paths for call in robust_api.open_log(path) for r in call.records if not r.reused)


def max_per_window(times: np.ndarray, window: float = 1.0) -> int:
    """The most requests in any window [t, t + window) starting at a request."""
    if len(times) == 0:
        return 0
    ends = np.searchsorted(times, times + window, side="left")
    return int((ends - np.arange(len(times))).max())


def test_same_certificates_one_budget_one_rate_and_merged_shards(cluster, tmp_path):
    images = block_images(16)
    record = tmp_path / "requests"
    record.mkdir()
    rate = 40
    api = robust_api.RobustAPI("simulated", latency_s=0.01, concurrency=4, rate_limit=rate, record_dir=str(record),
                               log=tmp_path / "main.sqlite3", max_queries=10_000)
    results = api.certify_many(images, SIGMA, N0, N, ALPHA, seed=SEED, engine="ray", workers=2)
    same_certificates(results, in_process(images))

    report = api.last_run
    pids = {worker["pid"] for worker in report.workers}
    assert len(pids) == 2 and os.getpid() not in pids  # two worker processes did the work
    times = read_send_times(str(record))
    assert len(times) == 16 * (N0 + N) == sum(r.queries for r in results)
    # one budget: the driver's caps counted every worker's queries
    assert api.spent.queries == len(times) == report.queries
    # one rate for all workers together (two limiters of their own would send up to twice it):
    # at most `rate` requests in any 1-second window while each leaves within a few ms of its
    # slot; a machine too busy to wake a thread on time can add one (docs/scaling.md, section 3)
    assert max_per_window(times) <= rate + 1
    assert len(times) / (times[-1] - times[0]) <= rate
    assert len({pid for pid in os.listdir(record)}) == 2  # both workers sent requests

    # the driver's log holds every call; the shards merge into the same calls
    shards = sorted(str(p) for p in (tmp_path / "main.sqlite3.shards").glob("worker-*.sqlite3"))
    assert len(shards) == 2
    merged = robust_api.merge_logs(shards, tmp_path / "merged.sqlite3")
    assert merged.calls_added == 16
    offline = robust_api.RobustAPI("simulated", online=False)
    by_run = {call.header.run_id: call for call in robust_api.open_log(tmp_path / "merged.sqlite3")}
    for result in results:
        again = offline.certify(by_run[result.logs.header.run_id])
        assert (again.label, again.radius) == (result.label, result.radius)
    # merging again adds nothing
    assert robust_api.merge_logs(shards, tmp_path / "merged.sqlite3").calls_added == 0

    # a rerun with the same seed and log resumes for free: every answer is found, nothing is sent
    again = robust_api.RobustAPI("simulated", latency_s=0.01, concurrency=4, rate_limit=rate, record_dir=str(record),
                                 log=tmp_path / "main.sqlite3")
    rerun = again.certify_many(images, SIGMA, N0, N, ALPHA, seed=SEED, engine="ray", workers=2)
    same_certificates(rerun, results)
    assert again.spent.queries == 0 and sum(r.queries for r in rerun) == 0
    assert len(read_send_times(str(record))) == len(times)


def test_killed_worker_images_are_redone_elsewhere_without_paying_twice(cluster, tmp_path):
    images = block_images(10, seed=2)
    record = tmp_path / "requests"
    record.mkdir()
    # the first worker process to send its 25th request exits before it is answered
    api = robust_api.RobustAPI("simulated", latency_s=0.01, concurrency=4, record_dir=str(record),
                               exit_after=25, exit_marker=str(tmp_path / "crashed"), log=tmp_path / "main.sqlite3")
    results = api.certify_many(images, SIGMA, N0, N, ALPHA, seed=SEED, engine="ray", workers=2)
    assert (tmp_path / "crashed").exists()
    same_certificates(results, in_process(images))

    report = api.last_run
    assert report.retried, "the dead worker's images are reported as redone"
    assert len(report.workers) == 3  # two workers and one replacement
    shards = sorted((tmp_path / "main.sqlite3.shards").glob("worker-*.sqlite3"))
    assert len(shards) == 3
    # every answer committed before the crash was reused, not bought again: the answers paid
    # for over all shards are exactly those of a run without a crash
    assert paid_records(shards) == len(images) * (N0 + N)
    # sent twice: only the requests the dead worker had in flight (sent, never answered)
    lost = len(read_send_times(str(record))) - len(images) * (N0 + N)
    # at most what it had sent but not committed: each of its `parallel` images in flight (the
    # provider's concurrency, 4, by default) has up to `concurrency` requests sent and not yet
    # written; a slow committing thread leaves several answered ones among them
    assert 0 <= lost <= 4 * 4
    reused = sum(1 for path in shards for call in robust_api.open_log(path) for r in call.records if r.reused)
    assert reused > 0
    # the dead worker's unfinished call is in the driver's log too (merged at the end)
    statuses = [call.status for call in robust_api.open_log(tmp_path / "main.sqlite3")]
    # (a call the dead worker completed but could not report is there twice: its copy and the redo)
    assert statuses.count("complete") >= len(images) and "running" in statuses
    # the budget counts what the dead worker had sent but never answered (an upper bound on the bill)
    assert api.spent.queries >= len(images) * (N0 + N)


def test_killed_worker_without_a_log_file_reuses_its_answers_through_the_recovered_log(cluster, tmp_path):
    images = block_images(8, seed=6)
    record = tmp_path / "requests"
    record.mkdir()
    # the first worker to send its 60th request exits: it has committed dozens of answers by then
    api = robust_api.RobustAPI("simulated", latency_s=0.01, concurrency=4, record_dir=str(record),
                               exit_after=60, exit_marker=str(tmp_path / "crashed"), log=False)
    results = api.certify_many(images, SIGMA, N0, N, ALPHA, seed=SEED, engine="ray", workers=2)
    assert (tmp_path / "crashed").exists() and api.last_run.retried
    same_certificates(results, in_process(images))
    # only what the dead worker had sent but not committed is sent again (at most parallel ×
    # concurrency = 16, see above), not what it had committed: its shard was read through
    # recovered.sqlite3
    lost = len(read_send_times(str(record))) - len(images) * (N0 + N)
    assert 0 <= lost <= 4 * 4
    assert api.last_run.shard_folder is None  # the temporary shards are gone


def test_a_run_that_fails_after_a_worker_died_keeps_the_dead_workers_answers_in_the_log(cluster, tmp_path):
    images = block_images(10, seed=7)
    per_image = N0 + N
    # six images fit the cap: the run stops at the seventh, after a worker died at its 25th request
    api = robust_api.RobustAPI("simulated", latency_s=0.01, concurrency=3, exit_after=25,
                               exit_marker=str(tmp_path / "crashed"), log=False, max_queries=6 * per_image)
    with pytest.raises(BudgetExceededError):
        api.certify_many(iter(images), SIGMA, N0, N, ALPHA, seed=SEED, engine="ray", workers=2)
    assert (tmp_path / "crashed").exists()
    calls = list(api.log)
    # the dead worker's unfinished calls reached the log (its shard was merged at its death and
    # again into this memory log at the end), beside the live workers' calls
    assert any(call.status == "running" and call.records for call in calls)
    assert sum(call.status == "complete" for call in calls) >= 1


def test_one_budget_for_every_worker(cluster, tmp_path):
    images = block_images(8, seed=3)
    per_image = N0 + N
    # a list: the whole set is checked against the cap before any query, as in process
    api = robust_api.RobustAPI("simulated", latency_s=0, log=tmp_path / "a.sqlite3", max_queries=5 * per_image)
    with pytest.raises(BudgetExceededError):
        api.certify_many(images, SIGMA, N0, N, ALPHA, seed=SEED, engine="ray", workers=2)
    assert api.spent.queries == 0
    # a stream: each image is held when it starts; the run stops at the cap, all workers together
    api = robust_api.RobustAPI("simulated", latency_s=0, log=tmp_path / "b.sqlite3", max_queries=5 * per_image)
    with pytest.raises(BudgetExceededError):
        api.certify_many(iter(images), SIGMA, N0, N, ALPHA, seed=SEED, engine="ray", workers=2)
    assert api.spent.queries <= 5 * per_image
    done = [call for call in robust_api.open_log(tmp_path / "b.sqlite3") if call.status == "complete"]
    assert len(done) == 5


def test_shards_of_a_run_whose_driver_died_are_merged_and_reused_by_the_next_run(cluster, tmp_path):
    images = block_images(6, seed=4)
    log = tmp_path / "main.sqlite3"
    first = robust_api.RobustAPI("simulated", latency_s=0, log=log)
    results = first.certify_many(images, SIGMA, N0, N, ALPHA, seed=SEED, engine="ray", workers=2)
    assert first.spent.queries == 6 * (N0 + N)
    # the driver's log is lost (its process died before it merged): only the shards hold the answers
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(f"{log}{suffix}"):
            os.remove(f"{log}{suffix}")
    again = robust_api.RobustAPI("simulated", latency_s=0, log=log)
    # three workers now: images land on other workers than the shards they were answered in
    rerun = again.certify_many(images, SIGMA, N0, N, ALPHA, seed=SEED, engine="ray", workers=3)
    same_certificates(rerun, results)
    assert again.spent.queries == 0 and sum(r.queries for r in rerun) == 0
    assert sum(1 for call in robust_api.open_log(log) if call.status == "complete") == 12  # merged + reused


def test_certify_iter_on_ray_streams_as_completed_with_more_workers_than_cpus(cluster, tmp_path):
    images = block_images(9, seed=5)
    api = robust_api.RobustAPI("simulated", latency_s=0.005, log=False, concurrency=2)
    stream = api.certify_iter(iter(images), SIGMA, N0, N, ALPHA, seed=SEED, order="completed", engine="ray",
                              workers=3)  # 3 workers on 2 CPUs: they share them instead of waiting forever
    pairs = list(stream)
    assert sorted(index for index, _ in pairs) == list(range(9))
    same_certificates([cert for _, cert in sorted(pairs, key=lambda pair: pair[0])], in_process(images))
    assert len(api.last_run.workers) == 3 and api.last_run.shard_folder is None  # temporary shards (log=False)


def test_bad_engine_options_are_refused_before_any_query(tmp_path):
    api = robust_api.RobustAPI("simulated", latency_s=0, log=tmp_path / "log.sqlite3")
    images = block_images(2)
    with pytest.raises(InvalidParameterError, match="engine"):
        api.certify_many(images, SIGMA, N0, N, ALPHA, engine="spark")
    with pytest.raises(InvalidParameterError, match="workers"):
        api.certify_many(images, SIGMA, N0, N, ALPHA, engine="ray", workers=0)
    with pytest.raises(InvalidParameterError, match="engine='ray'"):
        api.certify_many(images, SIGMA, N0, N, ALPHA, workers=2)
    assert api.spent.queries == 0


def test_missing_ray_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray fails
    api = robust_api.RobustAPI("simulated", latency_s=0, log=tmp_path / "log.sqlite3")
    with pytest.raises(MissingDependencyError, match=r"robust-api\[ray\]"):
        api.certify_many(block_images(2), SIGMA, N0, N, ALPHA, engine="ray")
    assert api.spent.queries == 0


def test_cli_certify_with_ray_matches_the_in_process_run(cluster, tmp_path, capsys):
    import json

    from PIL import Image

    from robust_api.commands.cli import main

    folder = tmp_path / "images"
    folder.mkdir()
    for i, image in enumerate(block_images(6, seed=4)):
        Image.fromarray((image * 255).round().astype(np.uint8)).save(folder / f"img{i}.png")
    common = [str(folder), "--provider", "simulated", "--noise-sd", "0.25", "--N0", "10", "--N", "30", "--seed", "2",
              "--format", "json", "--progress", "none"]
    assert main(["certify", *common, "--log", str(tmp_path / "local.sqlite3")]) == 0
    local = json.loads(capsys.readouterr().out)
    assert main(["certify", *common, "--log", str(tmp_path / "ray.sqlite3"), "--ray", "--workers", "2"]) == 0
    captured = capsys.readouterr()
    on_ray = json.loads(captured.out)
    keep = ("image", "label", "radius", "counts", "clean_label")
    assert [{k: row[k] for k in keep} for row in on_ray] == [{k: row[k] for k in keep} for row in local]
    assert "2 Ray worker(s), seed 2" in captured.err
    # --workers without --ray is a usage error, before anything is sent
    assert main(["certify", *common, "--workers", "2", "--log", str(tmp_path / "x.sqlite3")]) == 2
    assert not (tmp_path / "x.sqlite3").exists()
