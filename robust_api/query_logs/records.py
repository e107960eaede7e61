"""Plain-data records of the query log: one :class:`QueryRecord` per query, one :class:`CallLog`
per ``predict``/``certify`` call. No I/O here."""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from numbers import Real
from typing import Any, Optional

import numpy as np

from ..errors import LogIntegrityError, NotAQueryLogError, ProviderResponseError
from ..noise import PHASES
from ..statistics import count_labels

__all__ = [
    "FORMAT_VERSION", "QueryRecord", "CallHeader", "CallLog", "PhaseVotes", "CallSummary", "count_votes",
    "summarize_call", "dumps_raw", "MAX_LOGGED_COST_USD", "valid_cost", "vote_of", "votes_in_order",
    "record_order", "header_from_values", "record_from_values", "CALL_KINDS", "CALL_STATUSES",
    "PREPROCESSING_CLIPPED", "PREPROCESSING_UNCLIPPED", "preprocessing_of",
]

#: Version of the record format, stored in every log and export.
FORMAT_VERSION = 1

#: ``params["preprocessing"]`` of a call whose noisy copies were clipped to [0, 1] before
#: anything used them (no denoiser, or a denoiser trained on clipped copies); every call
#: logged before the entry existed was made this way, so a call without it reads as this.
PREPROCESSING_CLIPPED = "noisy-input=clipped/1"
#: ``params["preprocessing"]`` of a call whose denoiser got x + σ·z unclipped (only its
#: output, clipped to [0, 1], reached the classifier).
PREPROCESSING_UNCLIPPED = "noisy-input=unclipped/1"

#: The most a logged query may cost (USD) to count as a price: no image query costs more.
#: Reports mark a call whose records hold anything else (NaN, ±inf, negative, text, more
#: than this) as of unknown cost, instead of adding it to a total. (Providers check the
#: price they are given against a far lower sanity bound, ``pricing.MAX_COST_PER_QUERY_USD``;
#: this ceiling is for what arrives in files.)
MAX_LOGGED_COST_USD = 100.0


def valid_cost(value: Any) -> bool:
    """True when ``value`` is a plausible logged price of one query: a real number (not a bool),
    finite, in [0, :data:`MAX_LOGGED_COST_USD`]."""
    return (
        isinstance(value, Real) and not isinstance(value, bool)
        and math.isfinite(float(value)) and 0.0 <= float(value) <= MAX_LOGGED_COST_USD
    )


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


def preprocessing_of(params: Any) -> str:
    """The ``"preprocessing"`` entry of a call's ``params`` (see :attr:`CallHeader.preprocessing`)."""
    value = params.get("preprocessing", PREPROCESSING_CLIPPED) if isinstance(params, dict) else PREPROCESSING_CLIPPED
    return value if isinstance(value, str) else f"invalid:{value!r:.60}"


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
        params: the call's other parameters (N, N0, alpha, ...), JSON-able; ``"preprocessing"``
            names how the noisy copies were prepared (see :attr:`preprocessing`).
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

    @property
    def image_name(self) -> Optional[str]:
        """The image's name as the call recorded it (``params["image_name"]``: the file name of
        a path, or ``name=`` given to predict/certify), None when it has none (an array given
        without a name, a call logged before names were recorded). Informational only: two
        calls are about the same image when their ``image_digest`` agree, whatever their names."""
        value = self.params.get("image_name") if isinstance(self.params, dict) else None
        return value if isinstance(value, str) else None

    @property
    def tag(self) -> Optional[str]:
        """Free text the user attached to the call (``tag=`` of predict/certify), or None."""
        value = self.params.get("tag") if isinstance(self.params, dict) else None
        return value if isinstance(value, str) else None

    @property
    def preprocessing(self) -> str:
        """How the noisy copies were prepared: :data:`PREPROCESSING_UNCLIPPED` or
        :data:`PREPROCESSING_CLIPPED` (also for calls logged before ``params`` had the entry).
        Logged answers are reused only between calls with the same value. Any other value
        (a later version, an edited file) is returned as a string and matches only itself."""
        return preprocessing_of(self.params)


@dataclass(frozen=True)
class CallLog(Sequence):
    """The record of one predict/certify call: its header and its queries.

    A call read from a store or an export lists its records in :func:`record_order` (phase
    in the order of ``robust_api.noise.PHASES``, then sample index), whatever the order in
    which concurrent batches were committed.

    Behaves as the predecessor's list of responses (``len(logs)``, ``logs[i]``, slices,
    iteration): ``logs[i]`` is query i's answer in the shape the predecessor gave for that
    provider (google: label → score; azure/aws: a list of label dicts; clarifai:
    ``{"outputs": ...}``), with the :class:`QueryRecord`'s fields as attributes
    (``logs[i].phase``, ``logs[i].label``, ``logs[i].record``; see
    :mod:`robust_api.query_logs.answers`). ``records`` holds the QueryRecords themselves.
    It is the first argument of the offline ``RobustAPI.predict`` / ``RobustAPI.certify``.

    Pickled, a CallLog is a plain ``list`` of those answers (dicts and lists only): readable
    without robust_api, the data the predecessor pickled, and what ``import_legacy`` reads.
    The query log keeps everything else (phases, seeds, noise, costs).

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
        from .answers import answer_of

        provider = self.header.provider
        if isinstance(index, slice):
            return [answer_of(record, provider) for record in self.records[index]]
        return answer_of(self.records[index], provider)

    def __iter__(self):
        from .answers import answer_of

        provider = self.header.provider
        return (answer_of(record, provider) for record in self.records)

    def __reduce__(self):
        # plain data: the predecessor's list of answers (see the class docstring)
        return (list, ([_plain_answer(answer) for answer in self],))

    def __copy__(self) -> "CallLog":
        return self

    def __deepcopy__(self, memo: dict) -> "CallLog":
        return self  # immutable: a copy would only cost time (a call can hold 100,000 records)

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


def _plain_answer(answer: Any) -> Any:
    """An answer of ``CallLog[i]`` as a plain builtin (a record without a shaped answer: its raw)."""
    if isinstance(answer, QueryRecord):
        return answer.raw if answer.error is None else None
    for plain in (dict, list, str):
        if isinstance(answer, plain):
            return plain(answer)
    return answer


@dataclass(frozen=True)
class PhaseVotes:
    """The votes of one phase of one call, without the records (what counts-based analysis needs).

    Attributes:
        votes: label → number of successful answers with that label.
        errors: samples whose query failed (``error`` set or no label): votes against any class.
        samples: records of the phase, each with its own sample index (a duplicate is refused).
        paid: records that were sent and paid for (not ``reused``).
        cost_usd: the sum of the records' ``cost_usd``; None when one of them is not a valid
            price (see :func:`valid_cost`): the total is then unknown, never a wrong number.
        missing: sample indices absent below the highest logged one (a gap). 0 means the
            indices are exactly 0 … samples−1. An interrupted call may honestly have a gap
            (batches finish out of order and those in flight at a crash are lost); a gapped
            phase is never certified from (its samples would be a subset chosen afterwards).
        invalid_costs: records whose ``cost_usd`` is not a valid price.
    """

    votes: dict
    errors: int
    samples: int
    paid: int
    cost_usd: Optional[float]
    missing: int = 0
    invalid_costs: int = 0


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
    def cost_usd(self) -> Optional[float]:
        """What the call's queries cost, all phases; None when a record's cost is not a valid
        price (:attr:`invalid_costs` > 0)."""
        costs = [votes.cost_usd for votes in self.phases.values()]
        return None if any(cost is None for cost in costs) else float(sum(costs))

    @property
    def invalid_costs(self) -> int:
        """Records of the call whose ``cost_usd`` is not a valid price (NaN, infinite, negative, absurd)."""
        return sum(votes.invalid_costs for votes in self.phases.values())

    @property
    def missing(self) -> int:
        """Sample indices missing below the highest logged one, all phases (0: no gap)."""
        return sum(votes.missing for votes in self.phases.values())


def vote_of(record: QueryRecord) -> Optional[str]:
    """The vote of one record: its label, or None when the sample failed (an ``error``, or no
    label). A failed sample is no vote for any class; certification counts it against the
    guessed one. This is the one definition of a vote."""
    return record.label if record.error is None and record.label is not None else None


def votes_in_order(records: Sequence[QueryRecord]) -> list[Optional[str]]:
    """The votes of records in the order given (see :func:`vote_of`)."""
    return [vote_of(r) for r in records]


def count_votes(records: Sequence[QueryRecord]) -> tuple[dict[str, int], int]:
    """The votes of some records: (label → successful answers, most first; failed samples)."""
    return count_labels(votes_in_order(records))


def summarize_call(call: CallLog) -> CallSummary:
    """Count the votes of every phase of ``call``; gaps are counted (``missing``), not refused.

    Raises:
        LogIntegrityError: a sample index that is duplicated, negative or not an integer (an
            honest log never holds one).
    """
    phases = {}
    for name in sorted({r.phase for r in call.records}):
        records = [r for r in call.records if r.phase == name]
        for record in records:
            index = record.sample_index
            if not isinstance(index, int) or isinstance(index, bool) or index < 0:
                raise LogIntegrityError(
                    f"call {call.header.run_id}: {name} sample index {index!r} is not an integer >= 0"
                )
        indices = {r.sample_index for r in records}
        if len(indices) != len(records):
            raise LogIntegrityError(
                f"call {call.header.run_id}: duplicate record among its {name} samples; each sample index must "
                "appear at most once"
            )
        votes, errors = count_votes(records)
        invalid = sum(1 for r in records if not valid_cost(r.cost_usd))
        phases[name] = PhaseVotes(
            votes=votes,
            errors=errors,
            samples=len(records),
            paid=sum(1 for r in records if not r.reused),
            cost_usd=None if invalid else float(sum(float(r.cost_usd) for r in records)),
            missing=max(indices) + 1 - len(records),
            invalid_costs=invalid,
        )
    return CallSummary(call.header, call.status, phases)


# -- reading logs and exports: one order, checked values ------------------------------------

#: The kinds of call a log holds, and the statuses a call can have.
CALL_KINDS = ("predict", "certify")
CALL_STATUSES = ("running", "complete", "failed")
_PHASE_RANK = {phase: rank for rank, phase in enumerate(PHASES)}


def record_order(record: QueryRecord) -> tuple:
    """Sort key of the order in which every store and export gives a call's records back:
    phase in the order of ``robust_api.noise.PHASES`` (clean, selection, estimation,
    predict), then sample index. It does not depend on which batch was committed first, so
    two runs with the same seed read back identically. Never raises (odd values sort last)."""
    phase, index = record.phase, record.sample_index
    if type(phase) is str and type(index) is int and phase in _PHASE_RANK:  # every checked record
        return (_PHASE_RANK[phase], phase, index)
    rank = _PHASE_RANK.get(phase, len(_PHASE_RANK)) if isinstance(phase, str) else len(_PHASE_RANK) + 1
    number = index if isinstance(index, int) and not isinstance(index, bool) else -1
    return (rank, str(phase), number)


_REAL_TYPES = (int, float)


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _malformed(where: str, what: str, value: Any) -> NotAQueryLogError:
    shown = repr(value)
    if len(shown) > 80:
        shown = shown[:77] + "..."
    return NotAQueryLogError(f"{where}: malformed query log: {what} (got {shown}); the file was left untouched")


def header_from_values(where: str, run_id: Any, kind: Any, created: Any, image_digest: Any, image_shape: Any,
                       provider: Any, model_version: Any, denoiser_id: Any, denoiser_digest: Any, noise_sd: Any,
                       seed: Any, params: Any, status: Any) -> tuple[CallHeader, str]:
    """A :class:`CallHeader` and its call's status from values read from a log or an export, checked.

    Args:
        where: names the source in error messages (a path, a line).
        image_shape: a list of ints (JSON already decoded); params: a dict; the others as
            the :class:`CallHeader` fields.

    Returns:
        (header, status).

    Raises:
        NotAQueryLogError: a value of the wrong type or out of its domain (the message names it).
    """
    if not isinstance(run_id, str) or not run_id:
        raise _malformed(where, "run_id must be a non-empty string", run_id)
    where = f"{where}: call {run_id[:40]}"
    if kind not in CALL_KINDS:
        raise _malformed(where, f"kind must be one of {CALL_KINDS}", kind)
    if status not in CALL_STATUSES:
        raise _malformed(where, f"status must be one of {CALL_STATUSES}", status)
    if not _is_real(created) or not math.isfinite(created):
        raise _malformed(where, "created must be a finite number (UNIX time)", created)
    for name, value, optional in (("image_digest", image_digest, False), ("provider", provider, False),
                                  ("model_version", model_version, True), ("denoiser_id", denoiser_id, True),
                                  ("denoiser_digest", denoiser_digest, True)):
        if not (isinstance(value, str) or (optional and value is None)):
            raise _malformed(where, f"{name} must be a string{' or null' if optional else ''}", value)
    if (not isinstance(image_shape, (list, tuple)) or len(image_shape) > 4
            or not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 2**31 for d in image_shape)):
        raise _malformed(where, "image_shape must be a list of at most 4 sizes >= 0", image_shape)
    if not _is_real(noise_sd) or not math.isfinite(noise_sd) or noise_sd < 0:
        raise _malformed(where, "noise_sd must be a finite number >= 0", noise_sd)
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**63:
        raise _malformed(where, "seed must be an integer in [0, 2**63)", seed)
    if not isinstance(params, dict):
        raise _malformed(where, "params must be a JSON object", params)
    header = CallHeader(
        run_id=run_id, kind=kind, image_digest=image_digest, image_shape=tuple(image_shape), provider=provider,
        model_version=model_version, denoiser_id=denoiser_id, denoiser_digest=denoiser_digest, noise_sd=noise_sd,
        seed=seed, params=params, created=created,
    )
    return header, status


def record_from_values(where: str, phase: Any, sample_index: Any, label: Any, raw: Any, latency_s: Any,
                       cost_usd: Any, timestamp: Any, error: Any, reused: Any) -> QueryRecord:
    """A :class:`QueryRecord` from values read from a log or an export, checked.

    ``raw`` is already decoded JSON. ``cost_usd`` is not checked here: a value that is not a
    valid price makes the reported cost unknown (:func:`valid_cost`); it cannot change a vote.

    Raises:
        NotAQueryLogError: a phase, label, error, latency, timestamp or reused flag of the
            wrong type or out of its domain.
        LogIntegrityError: a sample index that is not an integer >= 0 (never in an honest log).
    """
    if (type(phase) is str and phase in _PHASE_RANK and type(sample_index) is int and sample_index >= 0
            and (label is None or type(label) is str) and (error is None or type(error) is str)
            and type(latency_s) in _REAL_TYPES and type(timestamp) in _REAL_TYPES
            and (type(reused) is bool or (type(reused) is int and (reused == 0 or reused == 1)))):
        # the common case, in a few exact type tests (a million records are read in a second)
        return QueryRecord(phase, sample_index, label, raw, latency_s, cost_usd, timestamp, error, bool(reused))
    if phase not in PHASES:
        raise _malformed(where, f"phase must be one of {PHASES}", phase)
    if not (label is None or isinstance(label, str)):
        raise _malformed(where, f"{phase} sample {sample_index!r}: label must be a string or null", label)
    if not (error is None or isinstance(error, str)):
        raise _malformed(where, f"{phase} sample {sample_index!r}: error must be a string or null", error)
    for name, value in (("latency_s", latency_s), ("timestamp", timestamp)):
        if not _is_real(value):
            raise _malformed(where, f"{phase} sample {sample_index!r}: {name} must be a number", value)
    if not isinstance(reused, (bool, int)) or reused not in (0, 1):
        raise _malformed(where, f"{phase} sample {sample_index!r}: reused must be true/false (or 0/1)", reused)
    if not isinstance(sample_index, int) or isinstance(sample_index, bool) or sample_index < 0:
        raise LogIntegrityError(f"{where}: {phase} sample index {sample_index!r} is not an integer >= 0")
    return QueryRecord(phase, sample_index, label, raw, latency_s, cost_usd, timestamp, error, bool(reused))
