"""The memory budget of the noise path: how many noisy copies exist at once.

A call's host memory beyond its inputs is: the float64 slab the noise stream is computed in,
the float32 noisy copies of the block being generated, their denoised versions, the
denoiser's activations, and the copies the provider still holds for requests in flight.
:func:`plan_blocks` chooses the block size, the request size and the number of requests in
flight so that the sum of those stays within a byte budget; :class:`MemoryPool` shares one
budget between the calls of a :class:`~robust_api.RobustAPI` that run at the same time
(``certify_many``): each phase reserves what its plan needs before it generates any noise,
and waits while the others' reservations leave it too little.

What is not counted: the clean image itself, the caller's own arrays, a local classifier's
or a user callable's internal memory (a provider's ``send``), and PyTorch's own caches.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from typing import Optional

from .errors import ImageTooLargeError, InvalidParameterError

__all__ = [
    "DEFAULT_MEMORY_LIMIT_MB",
    "MAX_BLOCK",
    "BlockPlan",
    "MemoryPool",
    "check_memory_limit",
    "plan_blocks",
    "slab_bytes_for",
    "activation_bytes_for",
]

#: Default budget of the noise path (noise, noisy and denoised copies, denoiser activations).
DEFAULT_MEMORY_LIMIT_MB = 1024
#: The most noisy copies generated (and denoised) together.
MAX_BLOCK = 4096
_MB = 1 << 20


def check_memory_limit(value) -> int:
    """Validate ``memory_limit_mb`` (a number of megabytes, ≥ 16; None: the default) → bytes."""
    if value is None:
        return DEFAULT_MEMORY_LIMIT_MB * _MB
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 16:
        raise InvalidParameterError(
            f"memory_limit_mb must be a number of megabytes >= 16 (default {DEFAULT_MEMORY_LIMIT_MB}), got {value!r}"
        )
    return int(value * _MB)


def slab_bytes_for(budget: int) -> int:
    """float64 working memory of the noise generator under ``budget`` bytes: 1/16 of it,
    between 1 MB and 64 MB."""
    return int(min(64 * _MB, max(1 * _MB, budget // 16)))


def activation_bytes_for(budget: int) -> int:
    """Share of ``budget`` set aside for a torch denoiser's activations on the CPU: a quarter."""
    return int(budget // 4)


@dataclass(frozen=True)
class BlockPlan:
    """How one phase's noisy copies move through memory.

    Attributes:
        batch: images per provider request (≤ the provider's maximum).
        block: noisy copies generated (and denoised) together, ≥ ``batch``.
        in_flight: the most requests in flight.
        copy_batches: True when each request gets its own copy of its slice of the block
            (so that a slow request pins ``batch`` copies, not the whole block).
        slab_bytes: the noise generator's float64 working memory.
        bytes: the estimated peak of this plan (what it reserves from the pool).
    """

    batch: int
    block: int
    in_flight: int
    copy_batches: bool
    slab_bytes: int
    bytes: int


def plan_blocks(copy_bytes: int, samples: int, batch: int, concurrency: int, budget: int,
                denoiser_copies: int = 0, request_scratch: float = 0.0) -> Optional[BlockPlan]:
    """The largest blocks and requests that keep the noise path within ``budget`` bytes.

    Args:
        copy_bytes: bytes of one float32 copy of the image (H·W·C·4), ≥ 1.
        samples: noisy copies the phase needs, ≥ 1 (no block is larger).
        batch: the request size wanted, ≥ 1.
        concurrency: the requests in flight wanted, ≥ 1.
        budget: bytes available for the slab and the copies.
        denoiser_copies: 0 without a denoiser; copies alive per block image while it is
            denoised (2: noisy input and output; 3 for a function denoiser, whose output is
            clipped into a third array).
        request_scratch: extra memory a request in flight needs, in copies (a cloud
            provider's encoding buffers).

    Returns:
        A :class:`BlockPlan`, or None when not even one request of one image fits.

    Accounting (copies of the image alive at once, each ``copy_bytes``): without a denoiser,
    ``in_flight`` requests of ``batch`` copies plus the batch being generated. With one, and
    one request in flight, the requests share the block (views): the previous block is
    released before the next is generated, so ``denoiser_copies × block`` is the peak. With
    several in flight, each request copies its slice: ``in_flight × batch`` plus
    ``denoiser_copies × block``. Request scratch is added per request in flight.
    """
    slab = min(slab_bytes_for(budget), budget)
    units = (budget - slab) / max(1, copy_bytes)
    scratch = float(request_scratch)
    samples = max(1, int(samples))

    def done(b: int, k: int, m: int, copies: bool, peak_copies: float) -> BlockPlan:
        return BlockPlan(batch=b, block=k, in_flight=m, copy_batches=copies, slab_bytes=slab,
                         bytes=int(slab + math.ceil(peak_copies * copy_bytes)))

    if denoiser_copies <= 0:
        if units < 2 + scratch:
            return None
        m = max(1, min(concurrency, math.floor((units - 1) / (1 + scratch))))
        b = max(1, min(batch, samples, math.floor((units - m * scratch) / (m + 1))))
        return done(b, b, m, False, (m + 1) * b + m * scratch)
    d = int(denoiser_copies)
    if concurrency > 1:
        k = min(samples, MAX_BLOCK, math.floor(units / (2 * d)))
        if k >= 1:
            rest = units - d * k
            m = min(concurrency, math.floor(rest / (1 + scratch)))
            if m >= 2:
                b = min(batch, k, math.floor(rest / m - scratch))
                if b >= 1:
                    return done(b, k, m, k > b, m * (b + scratch) + d * k)
    # one request in flight: it reads its slice of the block in place
    k = min(samples, MAX_BLOCK, math.floor(units / d))
    if k < 1 or units < 1 + scratch:
        return None
    b = min(batch, k)
    return done(b, k, 1, False, max(d * k, k + scratch))


def minimum_bytes(copy_bytes: int, budget: int, denoiser_copies: int = 0, request_scratch: float = 0.0) -> int:
    """The smallest budget under which :func:`plan_blocks` finds a plan (for error messages)."""
    copies = max(denoiser_copies, 1 + request_scratch) if denoiser_copies > 0 else 2 + request_scratch
    return int(slab_bytes_for(budget) + math.ceil(copies * copy_bytes))


class MemoryPool:
    """One byte budget shared by the phases of a RobustAPI that run at the same time.

    :meth:`reserve` plans a phase against what the other running phases left and blocks
    until its plan fits; :meth:`release` gives the bytes back. A phase never waits while
    holding a reservation, so some phase can always proceed.

    Args:
        budget: total bytes for the noise paths of all phases (a torch denoiser's activation
            share is already taken out: the denoiser runs one batch at a time).
    """

    def __init__(self, budget: int):
        self.budget = int(budget)
        self.reserved = 0
        self.peak_reserved = 0
        self._changed = threading.Condition()

    def reserve(self, planner, describe) -> BlockPlan:
        """Reserve the plan ``planner(available_bytes)`` returns (None: does not fit).

        Raises:
            ImageTooLargeError: the plan does not fit the whole budget (``describe()`` gives
                the message), so waiting for other phases would not help.
        """
        with self._changed:
            while True:
                available = self.budget - self.reserved
                plan = planner(available)
                if plan is not None and plan.bytes <= available:
                    self.reserved += plan.bytes
                    self.peak_reserved = max(self.peak_reserved, self.reserved)
                    return plan
                if self.reserved == 0:
                    raise ImageTooLargeError(describe())
                self._changed.wait(timeout=1.0)

    def release(self, plan: BlockPlan) -> None:
        """Give back what ``plan`` reserved."""
        with self._changed:
            self.reserved = max(0, self.reserved - plan.bytes)
            self._changed.notify_all()
