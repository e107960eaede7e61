"""Plain-data records of the query log: one :class:`QueryRecord` per query, one :class:`CallLog`
per ``predict``/``certify`` call. No I/O here."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Optional

import numpy as np

from ..errors import LogIntegrityError, ProviderResponseError

__all__ = [
    "FORMAT_VERSION", "QueryRecord", "CallHeader", "CallLog", "PhaseVotes", "CallSummary", "count_votes",
    "summarize_call", "dumps_raw",
]

#: Version of the record format, stored in every log and export.
FORMAT_VERSION = 1


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    raise TypeError(type(obj).__name__)


def dumps_raw(raw: Any) -> str:
    """Serialize a raw provider response to compact JSON (NumPy scalars/arrays allowed).

    Raises:
        ProviderResponseError: the response is not JSON-serializable; the log stores raw
            responses as data (never pickle), so a provider must answer with plain data.
    """
    try:
        return json.dumps(raw, separators=(",", ":"), default=_json_default, allow_nan=True)
    except (TypeError, ValueError) as exc:
        raise ProviderResponseError(
            f"a raw response of type {type(raw).__name__} is not JSON-serializable ({exc}); "
            "return str labels, or dicts/lists of plain values and pass label_fn= to extract the label"
        ) from None


@dataclass(frozen=True, slots=True)
class QueryRecord:
    """One query: one (possibly noisy, possibly denoised) image sent to the provider.

    Attributes:
        phase: "clean", "selection", "estimation" or "predict".
        sample_index: i ≥ 0, the noise index within the phase (noise is a function of it).
        label: the parsed label (str), or None when the query failed.
        raw: the provider's raw response (JSON-able plain data), None on failure.
        latency_s: wall time of the request that carried this query (a whole batch), seconds.
        cost_usd: what this query cost (0 for local models and reused records).
        timestamp: UNIX time the answer was recorded.
        error: None, or a description of why the query failed.
        reused: True when the answer was copied from an earlier call with the same image,
            seed and noise (resume), so no query was paid for.
    """

    phase: str
    sample_index: int
    label: Optional[str]
    raw: Any
    latency_s: float
    cost_usd: float
    timestamp: float
    error: Optional[str] = None
    reused: bool = False


@dataclass(frozen=True)
class CallHeader:
    """What is fixed for one predict/certify call.

    Attributes:
        run_id: unique id of the call (hex string).
        kind: "predict" or "certify".
        image_digest: hex SHA-256 of the canonical float32 image.
        image_shape: (H, W, C).
        provider: provider identity, e.g. "local:fashion_mnist_cnn" or "callable:mod.fn".
        model_version: the provider's model version when known (local: weights digest).
        denoiser_id: a name for the denoiser, None without one.
        denoiser_digest: SHA-256 of the denoiser's weights when it has any.
        noise_sd: σ in [0, 1] pixel units (0 for clean queries).
        seed: the seed the noise was drawn from, in [0, 2⁶³).
        params: the call's other parameters (N, N0, alpha, ...), JSON-able.
        created: UNIX time the call started.
    """

    run_id: str
    kind: str
    image_digest: str
    image_shape: tuple[int, ...]
    provider: str
    model_version: Optional[str]
    denoiser_id: Optional[str]
    denoiser_digest: Optional[str]
    noise_sd: float
    seed: int
    params: dict = field(default_factory=dict)
    created: float = 0.0


@dataclass(frozen=True)
class CallLog(Sequence):
    """The record of one predict/certify call: its header and its queries, in insertion order.

    Behaves as a sequence of :class:`QueryRecord` (``len(logs)``, ``logs[i]``, iteration),
    like the predecessor's list of responses, and is the first argument of the offline
    ``RobustAPI.predict`` / ``RobustAPI.certify``.

    Attributes:
        header: the :class:`CallHeader`.
        records: tuple of :class:`QueryRecord`.
        status: "complete", "running" (in progress, or interrupted by a crash) or "failed".
    """

    header: CallHeader
    records: tuple[QueryRecord, ...]
    status: str = "complete"

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index):  # type: ignore[override]
        return self.records[index]

    def __getattr__(self, name: str) -> Any:
        # header fields (run_id, noise_sd, seed, ...) read directly from the call log
        if name in CallHeader.__dataclass_fields__:
            return getattr(self.header, name)
        raise AttributeError(name)

    def __repr__(self) -> str:
        h = self.header
        phases = Counter(r.phase for r in self.records)
        return (
            f"CallLog(run_id={h.run_id!r}, kind={h.kind!r}, provider={h.provider!r}, noise_sd={h.noise_sd}, "
            f"seed={h.seed}, records={dict(phases)}, status={self.status!r})"
        )

    def phase_records(self, phase: str) -> list[QueryRecord]:
        """Records of one phase sorted by sample index, checked for duplicates and gaps.

        Returns:
            Records with sample indices exactly 0, 1, …, k−1.

        Raises:
            LogIntegrityError: two records share an index (a vote would count twice), or an
                index is missing (the log was edited or a write was lost).
        """
        chosen = sorted((r for r in self.records if r.phase == phase), key=lambda r: r.sample_index)
        for position, record in enumerate(chosen):
            if record.sample_index != position:
                problem = "duplicate" if record.sample_index < position else "missing"
                raise LogIntegrityError(
                    f"call {self.header.run_id}: {problem} record near {phase} sample {position}; "
                    "each sample index must appear exactly once"
                )
        return chosen

    def with_records(self, records: Sequence[QueryRecord]) -> "CallLog":
        """A copy with other records (used by importers)."""
        return replace(self, records=tuple(records))


@dataclass(frozen=True)
class PhaseVotes:
    """The votes of one phase of one call, without the records (what counts-based analysis needs).

    Attributes:
        votes: label → number of successful answers with that label.
        errors: samples whose query failed (``error`` set or no label): votes against any class.
        samples: sample indices 0 … samples−1, each present exactly once (checked).
        paid: records that were sent and paid for (not ``reused``).
        cost_usd: the sum of the records' ``cost_usd``.
    """

    votes: dict
    errors: int
    samples: int
    paid: int
    cost_usd: float


@dataclass(frozen=True)
class CallSummary:
    """A call's header and status with the votes of each of its phases (phase name → :class:`PhaseVotes`)."""

    header: CallHeader
    status: str
    phases: dict

    def phase(self, name: str) -> PhaseVotes:
        """The votes of phase ``name`` (empty when the call has none)."""
        return self.phases.get(name) or PhaseVotes({}, 0, 0, 0, 0.0)

    @property
    def paid(self) -> int:
        """Queries of the call that were sent and paid for, all phases."""
        return sum(votes.paid for votes in self.phases.values())

    @property
    def cost_usd(self) -> float:
        """What the call's queries cost, all phases."""
        return sum(votes.cost_usd for votes in self.phases.values())


def count_votes(records: Sequence[QueryRecord]) -> tuple[dict[str, int], int]:
    """The votes of some records: (label → successful answers, most first; failed samples).

    A sample failed when its query has an ``error`` or no label; it is no vote for any class,
    and certification counts it against the guessed one.
    """
    votes = Counter(r.label for r in records if r.error is None and r.label is not None)
    return dict(votes.most_common()), len(records) - sum(votes.values())


def summarize_call(call: CallLog) -> CallSummary:
    """Count the votes of every phase of ``call`` (checks each sample index appears exactly once).

    Raises:
        LogIntegrityError: a duplicated or missing sample index.
    """
    phases = {}
    for name in sorted({r.phase for r in call.records}):
        records = call.phase_records(name)
        votes, errors = count_votes(records)
        phases[name] = PhaseVotes(
            votes=votes,
            errors=errors,
            samples=len(records),
            paid=sum(1 for r in records if not r.reused),
            cost_usd=float(sum(r.cost_usd for r in records)),
        )
    return CallSummary(call.header, call.status, phases)
