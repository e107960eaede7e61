"""The online side of sequential certification: one call's looks, held from the caps one at a time.

The stopping decisions are :meth:`robust_api.sequential.SequentialRule.step`, the same
function the offline replay applies to the logged votes; the certificate itself is then
computed from the log (:func:`robust_api.offline.certify_from_log`).
"""

from __future__ import annotations

import logging
from typing import Optional

from ..errors import BudgetExceededError
from ..query_logs.records import vote_of
from ..sequential import SequentialRule
from .calls import Call

__all__ = ["SequentialRun"]

logger = logging.getLogger(__name__)


class SequentialRun:
    """The online state of one sequential certification: where it is and where it looks next.

    Attributes:
        n: estimation samples queried so far. successes: votes for the guess among them.
        state: the rule's :class:`~robust_api.sequential.LookState` after the looks so far.
    """

    def __init__(self, call: Call, guess: str, rule: SequentialRule):
        self.call = call
        self.guess = guess
        self.rule = rule
        self.looks = rule.looks()
        self.position = 0
        self.n = 0
        self.successes = 0
        self.state = rule.start()

    def next_look(self) -> int:
        return self.looks[self.position]

    def advance(self) -> Optional[str]:
        """Query up to the next look and apply the rule; return the stop reason or None
        ("ended" without a query when the budget caps leave no room for the look)."""
        look = self.next_look()
        if self.position > 0:  # the first look was held with the selection when the call began
            try:
                self.call.hold_more(look - self.n)
            except BudgetExceededError:
                logger.info("%s: the budget caps leave no room for the next look; stopping", self.call.header.run_id)
                return "ended"
        try:
            records = self.call.query("estimation", self.n, look)
        except BudgetExceededError:
            # retries used up the room (or another thread took it): what was answered is in the
            # log and the offline replay ends at the last complete look
            logger.info("%s: the budget caps were reached during a look; stopping", self.call.header.run_id)
            return "ended"
        self.successes += sum(vote_of(r) == self.guess for r in records)
        self.n = look
        self.position += 1
        self.state, reason = self.rule.step(self.state, self.successes, self.n)
        return reason

    def run_to_end(self) -> str:
        """Advance until the rule (or the caps) stop the call; return the stop reason."""
        while True:
            reason = self.advance()
            if reason is not None:
                return reason

    def gain_per_query(self) -> float:
        """Certified radius gained per query if the votes go on at the rate seen so far (see
        :meth:`SequentialRule.next_gain`): the allocation heuristic of certify_batch. It only
        orders the images; it never enters a certificate."""
        rate = (self.successes + 0.5) / (self.n + 1.0)
        samples, gain = self.rule.next_gain(self.state, rate)
        return gain / samples if samples else 0.0
