"""Certify many images on a Ray cluster: one rate limit, one budget, one log, any number of workers.

The driver (the process that called ``certify_many(..., engine="ray")``):

1. starts a local Ray cluster, or joins ``address``; starts one :class:`SharedQuota` actor
   (the run's rate limit and caps) and ``workers`` :class:`~robust_api.scale.worker.ShardWorker`
   actors, each with its own provider, denoiser (on its own GPU with ``gpus_per_worker``) and
   log shard ``<shard folder>/worker-<k>.sqlite3``;
2. draws images from the input lazily, checks each one (before any of its queries), holds its
   queries from the caps, and sends it to the least busy worker, keeping at most
   ``workers × parallel`` images in flight (memory O(workers × parallel), not O(dataset));
3. merges each finished call into its own log and certifies it from there, offline
   (the log is the system of record; a worker's certificate is never trusted as such);
4. when a worker dies, merges its shard into the run's reuse log (see
   :mod:`robust_api.scale.shards`), starts a replacement with a fresh shard and sends the
   images the dead one had to the live workers: they find the answers it had committed and
   reuse them instead of paying again. An image is tried on at most ``MAX_ATTEMPTS`` workers.

The same seed gives the same noisy copies, hence (with a deterministic classifier) the same
certificates as the in-process engine.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import tempfile
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from ..engine.scheduling import check_all
from ..errors import InvalidParameterError, MissingDependencyError, WorkerLostError
from ..offline import CertifySettings, certify_from_log
from ..query_logs.exchange import open_log
from ..query_logs.records import CallLog
from ..results import Certificate
from .quota import DEFAULT_SLACK_S, SharedQuota
from .shards import RECOVERED_LOG, shard_path, shard_paths
from .worker import ShardWorker

__all__ = ["RAY_INSTALL", "require_ray", "RayRun", "RunReport", "ray_certify", "check_engine_options"]

logger = logging.getLogger(__name__)

RAY_INSTALL = "pip install 'robust-api[ray]'"
#: the most workers one image is tried on before the run gives up on it
MAX_ATTEMPTS = 3
#: calls read from a shard into memory at once when the driver merges it
MERGE_CHUNK = 64


def require_ray():
    """The ``ray`` module, or MissingDependencyError naming the extra."""
    try:
        import ray
    except ImportError as exc:
        raise MissingDependencyError(
            f"engine='ray' needs Ray: {RAY_INSTALL} (or pip install 'ray>=2.9'); without it, certify_many "
            "runs in this process (engine='local')"
        ) from exc
    return ray


@dataclass
class RunReport:
    """What a distributed run did besides its certificates (``RobustAPI.last_run``).

    Attributes:
        workers: the workers started (replacements included), as (pid, host, shard) dicts.
        shard_folder: where the shards are (None when they were temporary).
        retried: (input index, image name, why) for each image redone after a worker died.
        merged_calls: calls merged into the driver's log.
        seed: the run's seed (rerun with it and the same log to resume for free).
        queries, cost_usd: what the run sent, all workers together.
    """

    workers: list = field(default_factory=list)
    shard_folder: Optional[str] = None
    retried: list = field(default_factory=list)
    merged_calls: int = 0
    seed: Optional[int] = None
    queries: int = 0
    cost_usd: float = 0.0


def _unwrap(ray, exc: BaseException) -> BaseException:
    """The user-facing error inside a Ray task error (our typed errors travel as their cause)."""
    if isinstance(exc, ray.exceptions.RayTaskError):
        cause = getattr(exc, "cause", None)
        if isinstance(cause, BaseException):
            return cause
    return exc


class _Caller:
    """``call(method, *args)`` on the quota actor, raising the quota's own errors."""

    def __init__(self, actor):
        self.actor = actor

    def __call__(self, method: str, *args):
        import ray

        try:
            return ray.get(getattr(self.actor, method).remote(*args))
        except ray.exceptions.RayTaskError as exc:
            raise _unwrap(ray, exc) from None


@dataclass
class _Task:
    index: int
    image: Any  # the canonical image (an object-store reference once sent)
    info: Optional[dict]
    hold: tuple
    slot: int = -1
    attempts: int = 0
    errors: list = field(default_factory=list)


class RayRun:
    """One distributed certify_many run (see the module docstring).

    Args:
        api: the online ``RobustAPI`` whose provider, denoiser, caps, rate and log the run uses.
        settings: the checked certify settings. seed: the run's seed (None: drawn, and logged).
        address: a Ray cluster address (None: the one this process is connected to, else a
            new local cluster, stopped at the end).
        workers: number of workers (default: the cluster's CPUs, at most 64).
        parallel: images in flight per worker (default: the provider's concurrency).
        gpus_per_worker: GPUs each worker asks Ray for (0: none; the denoiser then runs on
            the worker's CPU unless ``device=`` says otherwise).
        shard_folder: where the shards go (default: ``<log>.shards`` beside a file log, a
            temporary folder otherwise).
    """

    def __init__(self, api, settings: CertifySettings, seed: Optional[int], *, address: Optional[str] = None,
                 workers: Optional[int] = None, parallel: Optional[int] = None, gpus_per_worker: float = 0,
                 shard_folder: Optional[str] = None):
        self.ray = require_ray()
        self.api = api
        self.engine = api.engine
        self.settings = settings
        self.seed = seed if seed is not None else (api.seed if api.seed is not None else secrets.randbits(63))
        self.address = address
        self.workers_wanted = workers
        self.parallel = parallel or self.engine.dispatcher.concurrency
        self.gpus_per_worker = gpus_per_worker
        self.recipe = api.worker_recipe()
        try:
            self.ray.cloudpickle.dumps(self.recipe)
        except Exception as exc:
            raise InvalidParameterError(
                "engine='ray' builds the provider and the denoiser again in each worker, but what this RobustAPI was "
                f"given cannot be sent to another process ({type(exc).__name__}). Pass a registered provider name with "
                "its options, a module-level function, and a denoiser name, file or picklable module"
            ) from None
        log_path = getattr(api.log, "path", None)
        self.driver_log = os.fspath(log_path) if log_path is not None else None
        self._temporary = None
        if shard_folder is None:
            if self.driver_log is not None:
                shard_folder = self.driver_log + ".shards"
            else:
                shard_folder = self._temporary = tempfile.mkdtemp(prefix="robust-api-shards-")
        self.folder = Path(shard_folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        # what the workers read for reusable answers: every finished call is merged into the
        # driver's log, and so is a dead worker's shard (into recovered.sqlite3 without a file log)
        self.reuse_log = Path(self.driver_log) if self.driver_log is not None else self.folder / RECOVERED_LOG
        self.report = RunReport(shard_folder=None if self._temporary else os.fspath(self.folder), seed=self.seed)
        self._started_ray = False
        self._slots: list = []  # slot -> actor handle (None when dead)
        self._generation: list = []
        self._busy: list = []
        self._unmerged: list = []  # shards whose calls were not all merged (a dead worker's)
        self._preheld: deque = deque()  # holds taken up front for a run of known length

    # -- cluster ----------------------------------------------------------------------------
    def _start(self) -> None:
        ray = self.ray
        if not ray.is_initialized():
            ray.init(address=self.address, include_dashboard=False, logging_level=logging.WARNING)
            self._started_ray = True
        elif self.address is not None:
            logger.info("this process is already connected to a Ray cluster; address=%r is not used", self.address)
        cpus = int(ray.cluster_resources().get("CPU", 1))
        count = self.workers_wanted or max(1, min(64, cpus))
        budget = self.api.budget
        spent = budget.spent
        left_queries = None if budget.max_queries is None else budget.max_queries - spent.queries
        left_cost = None if budget.max_cost_usd is None else max(0.0, budget.max_cost_usd - spent.cost_usd)
        rate = self.engine.options.rate_limit
        if rate is None:
            rate = self.engine.provider.default_rate_limit
        self.rate = rate if rate is not None and rate != float("inf") else None
        self.slack_s = DEFAULT_SLACK_S
        quota_actor = ray.remote(num_cpus=0)(SharedQuota).remote(self.rate, left_queries, left_cost, self.slack_s)
        self.quota = _Caller(quota_actor)
        # a CPU each, or a share of them when more workers than CPUs are asked for (never pending forever)
        cpus_each = min(1.0, cpus / count) if cpus else 0
        self._worker_class = ray.remote(num_cpus=cpus_each, num_gpus=self.gpus_per_worker,
                                        max_concurrency=self.parallel)(ShardWorker)
        self._slots = [None] * count
        self._generation = [0] * count
        self._busy = [0] * count
        leftover = shard_paths(self.folder)
        if leftover:  # a run that never finished (its driver died): what it paid for is reused
            self._merge_for_reuse(leftover, "shards left by an earlier run")
        self._launch(range(count))

    def _launch(self, slots) -> None:
        """Start the workers of ``slots`` (each on its current generation's shard) and wait
        until all of them are built."""
        for slot in slots:
            shard = shard_path(self.folder, slot, self._generation[slot])
            self._slots[slot] = self._worker_class.remote(self.recipe, os.fspath(shard), os.fspath(self.reuse_log),
                                                          self.quota, self.rate, self.slack_s)
            self._busy[slot] = 0
        for slot in slots:
            try:
                self.report.workers.append(self.ray.get(self._slots[slot].ready.remote()))
            except self.ray.exceptions.RayActorError as exc:
                raise WorkerLostError(f"worker {slot} could not start: {exc}") from None
            except self.ray.exceptions.RayTaskError as exc:
                raise _unwrap(self.ray, exc) from None

    def _replace(self, slot: int) -> None:
        """Start a new worker for ``slot`` after merging the dead one's shard for reuse."""
        dead = shard_path(self.folder, slot, self._generation[slot])
        self._unmerged.append(dead)
        self._merge_for_reuse([dead], f"the shard of dead worker {slot}")
        self._slots[slot] = None
        self._generation[slot] += 1
        self._launch([slot])

    def _stop_workers(self) -> None:
        """Close the live workers' shards (after their final peak memory), then end them: from
        here on no process writes a shard, so merging one reads it whole."""
        for actor in self._slots:
            if actor is not None:
                try:
                    final = self.ray.get(actor.ready.remote(), timeout=30)
                    self.ray.get(actor.close.remote(), timeout=30)
                except Exception:  # gone: its last report stays
                    continue
                for worker in self.report.workers:
                    if worker["pid"] == final["pid"] and worker["host"] == final["host"]:
                        worker.update(final)
        for actor in self._slots:
            if actor is not None:
                try:
                    self.ray.kill(actor)
                except Exception:  # already gone
                    pass
        self._slots = [None] * len(self._slots)

    def _stop_cluster(self) -> None:
        if self._started_ray:
            self.ray.shutdown()
        if self._temporary is not None:
            shutil.rmtree(self._temporary, ignore_errors=True)

    # -- the run ----------------------------------------------------------------------------
    def hold(self) -> tuple:
        """Hold one image's start from the run's caps (BudgetExceededError when it does not fit)."""
        settings = self.settings
        if settings.method == "sequential":
            needed = settings.selection_queries + settings.rule().looks()[0]
        else:
            needed = settings.selection_queries + settings.N
        return self.quota("hold", needed, self.engine.provider.cost_per_query_usd, "one image of the run")

    def run(self, images: Iterable[tuple[int, Any, Optional[dict]]], order: str = "input",
            total: Optional[int] = None) -> Iterator[tuple[int, Certificate]]:
        """Certify ``images``, (index, checked canonical image, info) triples drawn lazily;
        yield (index, Certificate) in input order (``order="input"``) or as each finishes
        ("completed"). ``total``: the number of images when known: all their holds are
        then taken from the run's caps before any query (BudgetExceededError if they do
        not fit); otherwise each image is held when it is sent."""
        try:
            self._start()
        except BaseException:  # e.g. a worker that could not start: end what did start
            try:
                self._stop_workers()
            finally:
                self._stop_cluster()
            raise
        try:
            for _ in range(total or 0):
                self._preheld.append(self.hold())
            yield from self._loop(iter(images), order)
        except BaseException:
            # every shard of this run (the dead workers' shards are in the list already)
            self._unmerged += [shard_path(self.folder, slot, self._generation[slot]) for slot in range(len(self._slots))]
            raise
        finally:
            try:
                self._stop_workers()  # a worker still at work after a failure stops writing its shard
                self._merge_unmerged()
                for hold in self._preheld:
                    self.quota("release", hold[0])
                spent = self.quota("unheld")
                self.report.queries, self.report.cost_usd = spent.queries, spent.cost_usd
                self.api.budget.add_spent(spent.queries, spent.cost_usd)  # within the caps: the quota kept them
            finally:
                self._stop_cluster()

    def _loop(self, images: Iterator, order: str) -> Iterator[tuple[int, Certificate]]:
        ray = self.ray
        window = len(self._slots) * self.parallel
        in_flight: dict = {}  # object ref -> task
        retry: deque = deque()
        finished: dict[int, Certificate] = {}
        next_index = 0
        exhausted = False
        failure: Optional[BaseException] = None
        while True:
            while failure is None and len(in_flight) < window:
                if retry:  # redone images first (one of them may be what input order waits for)
                    task = retry.popleft()
                elif exhausted or len(finished) >= window:
                    break  # nothing left, or enough finished images wait for a slow one before them
                else:
                    try:
                        index, image, info = next(images)  # drawn and checked
                        hold = self._preheld.popleft() if self._preheld else self.hold()
                    except StopIteration:
                        exhausted = True
                        continue
                    except Exception as exc:  # a bad image, or caps that cannot take it: none starts from here on
                        failure = exc
                        break
                    task = _Task(index, ray.put(image), info, hold)
                    image = None
                self._submit(task, in_flight)
            if not in_flight:
                break
            done, _ = ray.wait(list(in_flight), num_returns=1)
            ref = done[0]
            task = in_flight.pop(ref)
            self._busy[task.slot] -= 1
            try:
                index, header, records, status = ray.get(ref)
            except ray.exceptions.RayActorError as exc:
                failure = failure or self._worker_died(task, exc, retry)
                continue
            except ray.exceptions.RayTaskError as exc:
                self.quota("release", task.hold[0])
                failure = failure or _unwrap(ray, exc)
                continue
            certificate = self._certify(header, records, status)
            if order == "completed":
                yield index, certificate
            else:
                finished[index] = certificate
                while next_index in finished:
                    yield next_index, finished.pop(next_index)
                    next_index += 1
        for task in retry:  # not redone after a failure: its hold goes back
            self.quota("release", task.hold[0])
        if failure is not None:
            raise failure
        for index in sorted(finished):  # indices need not be 0..n-1 when the caller skips some
            yield index, finished.pop(index)

    def _submit(self, task: _Task, in_flight: dict) -> None:
        live = [slot for slot, actor in enumerate(self._slots) if actor is not None]
        slot = min(live, key=lambda k: self._busy[k])
        task.slot = slot
        task.attempts += 1
        ref = self._slots[slot].certify.remote(task.index, task.image, self.settings, self.seed, task.hold, task.info)
        in_flight[ref] = task
        self._busy[slot] += 1

    def _worker_died(self, task: _Task, exc: BaseException, retry: deque) -> Optional[BaseException]:
        """A worker died with ``task`` in progress: replace it (once per death) and queue the
        task again with a new hold, or give up on it after MAX_ATTEMPTS."""
        name = (task.info or {}).get("image_name") or f"image {task.index}"
        why = f"worker {task.slot} died ({type(exc).__name__})"
        task.errors.append(why)
        self.quota("release", task.hold[0])
        if self._slots[task.slot] is not None and self._died(task.slot):
            logger.warning("%s; starting a replacement (its committed answers stay in %s)", why,
                           shard_path(self.folder, task.slot, self._generation[task.slot]))
            self._replace(task.slot)
        if task.attempts >= MAX_ATTEMPTS:
            return WorkerLostError(
                f"{name} was tried on {task.attempts} workers and each died ({'; '.join(task.errors)}); the answers "
                f"they committed are in the shards in {os.fspath(self.folder)} and are reused by a rerun with "
                f"seed={self.seed} and the same log"
            )
        logger.warning("%s: %s; it is redone on another worker, reusing the answers already committed", name, why)
        self.report.retried.append((task.index, name, why))
        task.hold = self.hold()
        retry.append(task)
        return None

    def _died(self, slot: int) -> bool:
        """True when the worker of ``slot`` no longer answers."""
        try:
            self.ray.get(self._slots[slot].ready.remote(), timeout=30)
            return False
        except Exception:
            return True

    def _merge_for_reuse(self, shards: list, what: str) -> None:
        """Merge ``shards`` (no worker writes them any more) into the reuse log, so that the
        workers find what they paid for. This driver is then the only process that has them
        open: SQLite's crash recovery runs and a commit cut short by a crash is seen too."""
        if self.driver_log is not None:
            self._merge_missing(shards, self.api.log, what)
            return
        from ..query_logs.store import open_store

        try:
            target = open_store(self.reuse_log)
        except Exception:  # the answers are still in the shards; the workers pay for them again
            logger.exception("could not open %s: the answers of %s will be paid for again",
                             os.fspath(self.reuse_log), what)
            return
        try:
            self._merge_missing(shards, target, what)
        finally:
            target.close()

    def _merge_unmerged(self) -> None:
        """Merge the shards of dead workers (and, after a failure, every shard of this run)
        into the driver's log: what they paid for is recorded there too, unfinished calls included."""
        self._merge_missing(self._unmerged, self.api.log, "the shards of dead or stopped workers")

    @staticmethod
    def _merge_missing(shards: list, target, what: str) -> None:
        """Copy into ``target`` the calls of ``shards`` that it does not hold, a few at a time
        (a shard may hold millions of answers). A call the target holds came from the same
        shard once it was finished (the driver merges only finished calls and final shards),
        so it is not read again. A failure is logged: the shards stay on disk, and
        ``robust-api merge-logs`` can merge them later."""
        from ..query_logs.merging import merge_calls

        added, into = 0, None
        for path in shards:
            if not path.exists():
                continue
            try:
                shard = open_log(path)
                try:
                    missing = [run_id for run_id in shard.run_ids() if not target.has_call(run_id)]
                    for start in range(0, len(missing), MERGE_CHUNK):
                        calls = [shard.load_call(run_id) for run_id in missing[start:start + MERGE_CHUNK]]
                        report = merge_calls(target, calls, source=os.fspath(path))
                        added, into = added + report.calls_added, report.into
                finally:
                    shard.close()
            except Exception:
                logger.exception("could not merge %s (%s) into the log; robust-api merge-logs can do it later",
                                 os.fspath(path), what)
        if added:
            logger.info("merged %d call(s) of %s into %s", added, what, into)

    def _certify(self, header, records: tuple, status: str) -> Certificate:
        """Merge a finished call into the driver's log, then certify it from there."""
        from ..query_logs.merging import merge_calls

        log = self.api.log
        merge_calls(log, [CallLog(header, records, status)])
        self.report.merged_calls += 1
        logs = log.load_call(header.run_id)
        paid = sum(1 for record in logs.records if not record.reused)
        return certify_from_log(logs, alpha=self.settings.alpha, queries=paid, offline=False)


def check_engine_options(engine: Any, address: Any, workers: Any, gpus_per_worker: Any) -> str:
    """``engine`` as "local" or "ray", with the Ray-only options checked (InvalidParameterError)."""
    if engine not in ("local", "ray"):
        raise InvalidParameterError(f"engine must be 'local' or 'ray', got {engine!r}")
    if engine == "local" and (address is not None or workers is not None or gpus_per_worker):
        raise InvalidParameterError("ray_address=, workers= and gpus_per_worker= are for engine='ray'")
    if address is not None and not isinstance(address, str):
        raise InvalidParameterError(f"ray_address must be a str such as 'ray://head:10001' or 'auto', got {address!r}")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or not 1 <= workers <= 1024):
        raise InvalidParameterError(f"workers must be an integer in [1, 1024], got {workers!r}")
    if isinstance(gpus_per_worker, bool) or not isinstance(gpus_per_worker, (int, float)) or not 0 <= gpus_per_worker <= 8:
        raise InvalidParameterError(f"gpus_per_worker must be a number in [0, 8], got {gpus_per_worker!r}")
    return engine



def ray_certify(api, sources: Iterable, settings: CertifySettings, seed: Optional[int], parallel: Optional[int],
                prepare, *, again=None, order: str = "input", address: Optional[str] = None,
                workers: Optional[int] = None, gpus_per_worker: float = 0) -> Iterator[tuple[int, Certificate]]:
    """``certify_many`` / ``certify_iter`` with ``engine="ray"``: (index, Certificate) pairs.

    Args:
        sources, prepare, again: as for :func:`robust_api.engine.scheduling.certify_many`:
            ``prepare(source) -> (canonical image, call info)`` checks one image; ``again``
            (a re-iterable input) gives the images afresh, and then every image is checked,
            and the whole set held from the caps, before any query.
        order: "input" or "completed" (see :meth:`RayRun.run`).
        address, workers, gpus_per_worker: see :class:`RayRun`.

    The report of the run (workers, retried images, shards, seed, spend) is ``api.last_run``.
    """
    total = None
    if again is not None:
        total = check_all(sources, prepare)  # every image checked before any query
        sources = again()
    run = RayRun(api, settings, seed, address=address, workers=workers, parallel=parallel,
                 gpus_per_worker=gpus_per_worker)
    api.last_run = run.report

    def triples():
        for source in sources:
            image, info = prepare(source)
            yield source.index, image, info

    yield from run.run(triples(), order=order, total=total)
