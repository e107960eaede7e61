"""One open call in the query log, and the noisy requests of one of its phases.

A :class:`Call` is what an online predict or certify call is while it runs: a header in the
log, the canonical image, the queries held from the caps, and ``query(phase, start, stop)``,
which returns the records of samples [start, stop), reusing logged answers and paying for
the rest. Its records are committed to the log batch by batch as they arrive.
"""

from __future__ import annotations

import logging
import secrets
import time
import uuid
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import replace
from typing import Optional

import numpy as np

from ..dispatch.progress import AttemptStats
from ..errors import ProviderResponseError
from ..images import image_digest
from ..noise import NoiseSampler
from ..query_logs.records import PREPROCESSING_CLIPPED, CallHeader, CallLog, QueryRecord
from ..validation import check_seed

__all__ = ["Call", "NoisyBatches", "contiguous_runs"]

logger = logging.getLogger(__name__)


def contiguous_runs(indices: Sequence[int], max_len: int) -> Iterator[tuple[int, int]]:
    """Split sorted indices into [start, stop) runs of consecutive values, each ≤ max_len long."""
    position = 0
    while position < len(indices):
        start = indices[position]
        stop = start + 1
        position += 1
        while position < len(indices) and indices[position] == stop and stop - start < max_len:
            stop += 1
            position += 1
        yield start, stop


class Call:
    """One open call in the log: queries ranges of samples and counts what was paid for.

    Used as a context manager: the call is marked "complete" on success and "failed" when an
    exception escapes (the partial work stays in the log).

    Attributes:
        header: the call's :class:`CallHeader` (what the log records about it).
        image: the canonical image, float32 [H, W, C] in [0, 1].
        queries: paid queries so far (answers reused from the log not counted).
        hold: the queries set aside from the caps for this call (see ``Budget.hold``).
    """

    def __init__(self, engine, header: CallHeader, image: np.ndarray, hold=None):
        self.engine = engine
        self.header = header
        self.image = image
        self.queries = 0
        self.hold = hold
        # this call's retries and throttled answers (also counted in the dispatcher's totals)
        self.stats = AttemptStats(parent=engine.dispatcher.stats)
        self._closed = False

    @classmethod
    def open(cls, engine, image: np.ndarray, kind: str, noise_sd: float, seed: Optional[int],
             params: dict, hold=None) -> "Call":
        """Begin a call in the engine's log for a checked canonical image; ``seed`` None takes
        the engine's seed, else a fresh random one (recorded in the header)."""
        seed = check_seed(seed) if seed is not None else engine.seed
        if seed is None:
            seed = secrets.randbits(63)
        header = CallHeader(
            run_id=uuid.uuid4().hex,
            kind=kind,
            image_digest=image_digest(image),
            image_shape=tuple(image.shape),
            provider=engine.provider.identity,
            model_version=engine.provider.model_version,
            denoiser_id=engine.denoising.identity,
            denoiser_digest=engine.denoising.digest,
            noise_sd=noise_sd,
            seed=seed,
            params={**params, "preprocessing": engine.denoising.preprocessing},
            created=time.time(),
        )
        engine.log.begin_call(header)
        return cls(engine, header, image, hold)

    def query(self, phase: str, start: int, stop: int) -> list[QueryRecord]:
        """Query samples [start, stop) of a phase; return their records in index order.

        One payer: the source lock of (image, seed, σ, provider, model, denoiser; phase) is held
        from the search for reusable answers until the last missing answer is committed, so a
        concurrent call on the same source (another thread, or another process writing this
        log) waits, then reuses these answers instead of paying for them again. A call holds
        one source lock at a time (no deadlock); see :mod:`robust_api.query_logs.locks`.
        """
        log, header = self.engine.log, self.header
        records: dict[int, QueryRecord] = {}
        with log.source_lock(header, phase):
            # searched under the lock: what another payer committed meanwhile is reused, not re-bought
            reusable = {i: r for i, r in log.find_reusable(header, phase, stop).items() if i >= start}
            if reusable:
                copies = [replace(reusable[i], reused=True, cost_usd=0.0) for i in sorted(reusable)]
                log.append(header.run_id, copies)
                records.update((r.sample_index, r) for r in copies)
                logger.info("%s: reused %d logged %s answers", header.run_id, len(reusable), phase)
            missing = [i for i in range(start, stop) if i not in reusable]
            if missing:
                def record(batch_records: Sequence[QueryRecord]) -> None:
                    self._append(batch_records)
                    records.update((r.sample_index, r) for r in batch_records)

                batches = NoisyBatches(self.engine, header, self.image, phase, missing)
                self.engine.dispatcher.run(phase, batches, len(missing), record, self.hold, self.stats)
        result = [records[i] for i in range(start, stop)]
        self.queries += sum(not r.reused for r in result)
        return result

    def _append(self, records: Sequence[QueryRecord]) -> None:
        """Write one batch's final records; a raw answer the store refuses (not plain data)
        turns the batch into error records and fails the call."""
        log, run_id = self.engine.log, self.header.run_id
        try:
            log.append(run_id, records)
        except ProviderResponseError as exc:
            message = f"{type(exc).__name__}: {exc}"
            failed = [replace(r, label=None, raw=None, error=r.error or message) for r in records]
            try:
                log.append(run_id, failed)
            except Exception:  # the original error matters more than a failed write of its trace
                logger.exception("could not record the failed batch of call %s", run_id)
            raise

    def hold_more(self, queries: int) -> None:
        """Set aside ``queries`` more (what is left of the current hold goes back first)."""
        budget = self.engine.budget
        budget.release(self.hold)
        self.hold = budget.hold(queries, self.engine.provider.cost_per_query_usd, "the next look")

    def close(self, status: str) -> None:
        """Mark the call "complete" or "failed" in the log and give back what is left of its hold."""
        if not self._closed:
            self._closed = True
            self.engine.budget.release(self.hold)
            self.engine.log.finish_call(self.header.run_id, status)
            if self.stats:  # one line per call, at INFO, when the provider needed retries
                logger.info("%s call %s (%s): %s", self.header.kind, self.header.run_id[:12],
                            self.engine.provider.identity, AttemptStats.describe(*self.stats.snapshot()))

    def logs(self) -> CallLog:
        """The call as the log holds it: what every result is computed from."""
        return self.engine.log.load_call(self.header.run_id)

    def __enter__(self) -> "Call":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close("failed" if exc_type is not None else "complete")


class NoisyBatches:
    """The requests of one phase, made block by block within the engine's memory budget.

    Iterating it (the dispatcher does, once) first reserves a :class:`~robust_api.memory.BlockPlan`
    from the engine's :class:`~robust_api.memory.MemoryPool` (waiting while other phases in
    progress hold too much), then yields ``(first index, images [B, H, W, C])`` per request.
    Noise is generated and denoised a block at a time, and each block is cut into
    provider-sized requests: a one-image-per-request API still gets a batched denoiser. Clean
    queries send the image as it is (a denoiser is for noisy copies). ``max_in_flight``
    tells the dispatcher the plan's limit on requests in flight; ``close()`` (the dispatcher
    calls it when the phase is over) gives the reservation back — so does garbage collection.
    """

    def __init__(self, engine, header: CallHeader, image: np.ndarray, phase: str, missing: Sequence[int]):
        self._engine = engine
        self._header = header
        self._image = image
        self._phase = phase
        self._missing = list(missing)
        self.plan = None
        self.max_in_flight: Optional[int] = None
        self._generator = None
        self._release = None

    def __iter__(self):
        if self._generator is None:
            self._generator = self._generate()
        return self._generator

    def close(self) -> None:
        if self._generator is not None:
            self._generator.close()
        if self._release is not None:
            self._release()

    def _generate(self) -> Iterator[tuple[int, np.ndarray]]:
        engine, header, image, phase = self._engine, self._header, self._image, self._phase
        planner, describe = engine.block_planner(image.shape, len(self._missing))
        plan = engine.memory.reserve(planner, describe)
        self.plan, self.max_in_flight = plan, plan.in_flight
        self._release = weakref.finalize(self, engine.memory.release, plan)
        noise_sd = 0.0 if phase == "clean" else header.noise_sd
        sampler = NoiseSampler(image, header.image_digest, header.seed, phase, noise_sd, slab_bytes=plan.slab_bytes)
        denoise = engine.denoising.present and phase != "clean"
        for first, last in contiguous_runs(self._missing, plan.block):
            # the denoiser gets x + σz unclipped (saturated pixels keep their noise statistics)
            # unless it was trained on clipped copies; what is sent is clipped to [0, 1]: the
            # denoiser's output, or the noisy copy itself
            block = sampler.noisy(first, last, clip=not denoise or header.preprocessing == PREPROCESSING_CLIPPED)
            if denoise:
                block = engine.denoising(block, noise_sd)  # the noisy copies go when this returns
            for offset in range(0, last - first, plan.batch):
                piece = block[offset : offset + plan.batch]
                yield first + offset, (piece.copy() if plan.copy_batches else piece)
                piece = None
            block = None  # freed (with its last request settled) before the next block is made
