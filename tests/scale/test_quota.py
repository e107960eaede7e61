"""The shared rate limit and budget of a distributed run, without Ray: SharedQuota called
directly through the proxies the workers use, with fake clocks (no timing assumptions)."""

from __future__ import annotations

import threading

import pytest

from robust_api.dispatch import Budget
from robust_api.dispatch.rates import MAX_BOOKINGS, RateLimiter, wait_for_slot
from robust_api.errors import BudgetExceededError, InvalidParameterError
from robust_api.scale.quota import RemoteBudget, RemoteRateLimiter, SharedQuota


def direct(quota: SharedQuota):
    """What a worker's ``call(method, *args)`` does, in this process."""
    lock = threading.Lock()  # a Ray actor runs one method at a time

    def call(method, *args):
        with lock:
            return getattr(quota, method)(*args)

    return call


class FakeTime:
    """A clock that moves only when someone sleeps (plus an optional oversleep)."""

    def __init__(self, oversleep=()):
        self.now = 1000.0
        self.oversleep = list(oversleep)

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds + (self.oversleep.pop(0) if self.oversleep else 0.0)


def test_slots_are_spaced_with_slack_so_no_window_holds_more_than_the_rate():
    clock = FakeTime()
    limiter = RateLimiter(10.0, slack_s=0.01, clock=clock, sleep=clock.sleep)
    slots = []
    for _ in range(40):
        limiter.acquire()
        slots.append(clock.now)
    gaps = [b - a for a, b in zip(slots, slots[1:])]
    assert gaps == pytest.approx([1.01 / 10] * 39)
    # any 1-second window holds at most 10 of them
    assert max(sum(1 for t in slots if start <= t < start + 1) for start in slots) == 10


def test_a_late_wake_up_books_a_new_slot_instead_of_sending_late():
    clock = FakeTime(oversleep=[0.02])  # the second request (the first to sleep) wakes 20 ms late
    limiter = RateLimiter(10.0, slack_s=0.01, clock=clock, sleep=clock.sleep)
    limiter.acquire()
    limiter.acquire()
    assert limiter.late_bookings == 1
    # it went at a later slot, on time for that one
    assert clock.now == pytest.approx(1000.0 + 2 * 0.101)
    # a limiter without slack sends late, as before
    plain = RateLimiter(10.0, clock=clock, sleep=clock.sleep)
    assert plain.slack_s == 0 and plain.acquire() == 0.0
    with pytest.raises(InvalidParameterError, match="slack_s"):
        RateLimiter(10.0, slack_s=1.5)


def test_a_wake_up_that_is_always_late_still_goes_after_a_few_bookings():
    clock = FakeTime(oversleep=[0.5] * 20)  # every sleep overshoots (a busy machine, other threads booking)
    limiter = RateLimiter(10.0, slack_s=0.01, clock=clock, sleep=clock.sleep)
    waited = wait_for_slot(lambda: (clock.now + 0.1, clock.now), clock, clock.sleep, limiter)
    assert limiter.late_bookings == MAX_BOOKINGS  # never waits forever
    assert waited == pytest.approx(MAX_BOOKINGS * 0.1)


def test_remote_rate_limiter_books_the_quota_slots_of_every_worker():
    clock = FakeTime()
    quota = SharedQuota(20.0, None, None)
    quota._limiter = RateLimiter(20.0, slack_s=0.01, clock=clock, sleep=clock.sleep)
    workers = [RemoteRateLimiter(direct(quota), 20.0, 0.01, clock=clock, sleep=lambda s: None) for _ in range(3)]
    slots = [quota.book() for _ in range(6)]
    assert [b - a for a, b in zip(slots, slots[1:])] == pytest.approx([1.01 / 20] * 5)
    for worker in workers:  # no slot is handed out twice, whichever worker asks
        worker.acquire()
    assert quota.booked == 9
    assert SharedQuota(None, None, None).book() == 0.0  # no rate: no wait


def test_remote_budget_is_one_budget_for_all_workers():
    quota = SharedQuota(None, max_queries=100, max_cost_usd=None)
    budgets = [RemoteBudget(direct(quota)) for _ in range(4)]
    hold = budgets[0].hold(30, 0.001, "one image")
    assert (hold.queries, quota.spent().queries) == (30, 30)
    budgets[0].reserve(10, 0.01, hold)  # drawn from the hold: nothing more counted
    assert (hold.queries, quota.spent().queries) == (20, 30)
    budgets[1].release(hold)  # what is left goes back, whoever releases it
    assert quota.spent().queries == 10 and hold.queries == 0
    budgets[1].release(hold)  # again: nothing more
    assert quota.spent().queries == 10

    # 8 threads on 4 "workers" race for the 90 queries left, one at a time: exactly 90 are counted
    refused = []

    def spend(budget):
        for _ in range(20):
            try:
                budget.reserve(1, 0.001)
            except BudgetExceededError:
                refused.append(1)

    threads = [threading.Thread(target=spend, args=(budgets[i % 4],)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert quota.spent().queries == 100 and len(refused) == 8 * 20 - 90
    with pytest.raises(BudgetExceededError, match="max_queries=100"):
        budgets[2].hold(1, 0.001, "one more image")
    budgets[3].refund(5, 0.005)
    assert quota.spent().queries == 95 == quota.unheld().queries


def test_remote_budget_matches_the_in_process_budget():
    local, quota = Budget(max_queries=50), SharedQuota(None, 50, None)
    remote = RemoteBudget(direct(quota))
    for budget in (local, remote):
        hold = budget.hold(20, 0.0015, "x")
        budget.reserve(25, 25 * 0.0015, hold)  # more than the hold: counted on top
        budget.refund(2, 2 * 0.0015)
        budget.release(hold)
    assert local.spent.queries == remote.spent.queries == quota.spent().queries


def test_an_image_whose_workers_keep_dying_is_given_up_with_worker_lost_error(tmp_path):
    """The driver's bookkeeping when a worker dies (no Ray needed): the image's hold goes back,
    it is queued again with a new hold, and after MAX_ATTEMPTS workers it is given up."""
    from collections import deque

    from robust_api.errors import WorkerLostError
    from robust_api.scale.ray_engine import MAX_ATTEMPTS, RayRun, RunReport, _Task

    released = []
    run = RayRun.__new__(RayRun)  # the bookkeeping only: no cluster
    run.quota = lambda method, *args: released.append(args[0])
    run.hold = lambda: (99, 50, 0.075)
    run._slots, run._generation, run.folder, run.seed, run.report = [object()], [0], tmp_path, 3, RunReport()
    run._died = lambda slot: False  # the slot's worker answers (already replaced)
    retry: deque = deque()

    again = _Task(1, None, None, (8, 50, 0.075), slot=0, attempts=1)
    assert run._worker_died(again, RuntimeError("gone"), retry) is None
    assert released == [8] and list(retry) == [again] and again.hold == (99, 50, 0.075)
    assert run.report.retried == [(1, "image 1", "worker 0 died (RuntimeError)")]

    last = _Task(0, None, {"image_name": "x.png"}, (7, 50, 0.075), slot=0, attempts=MAX_ATTEMPTS)
    error = run._worker_died(last, RuntimeError("gone"), retry)
    assert isinstance(error, WorkerLostError)
    assert "x.png" in str(error) and f"{MAX_ATTEMPTS} workers" in str(error) and "seed=3" in str(error)
    assert released == [8, 7] and list(retry) == [again]  # its hold went back; it is not queued again
