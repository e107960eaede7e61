"""The exception tree of robust_api.

Every error the SDK raises on purpose derives from :class:`RobustAPIError` and, where
one fits, from the matching built-in, so ordinary ``except ValueError`` clauses work::

    RobustAPIError
    ├── InvalidInputError (ValueError)         bad image, bad parameter: raised before any query
    │   ├── InvalidImageError                  not an image, wrong shape/dtype/range, NaN, unreadable
    │   │   └── ImageTooLargeError             more pixels than the limit, or copies beyond the memory budget
    │   └── InvalidParameterError              noise_sd, alpha, N, N0, seed, batch size ...
    ├── UnknownProviderError (ValueError)      provider name not registered (lists the known ones)
    ├── ProviderError (RuntimeError)           the provider failed while answering
    │   ├── ProviderResponseError (ValueError) wrong number / type of labels returned
    │   ├── TransientProviderError             throttling, 5xx, timeout, malformed body: retried
    │   └── CredentialsError                   credentials missing or refused (names the variables)
    ├── BudgetExceededError (RuntimeError)     a query would cross max_queries / max_cost_usd
    ├── DenoiserError (RuntimeError)           the denoiser failed or returned the wrong shape
    ├── OfflineModeError (RuntimeError)        an online action was asked of an offline RobustAPI
    ├── MissingDependencyError (ImportError)   an optional package is missing (message has the pip line)
    └── QueryLogError                          problems with a query log
        ├── NotAQueryLogError (ValueError)     the path exists but is not a robust_api log
        │   ├── UnsafePickleError              a predecessor pickle asks for more than plain data
        │   └── UntrustedLogError              an SQLite file whose schema is not exactly the store's
        │                                      own (triggers, views, other tables or columns)
        ├── LogAccessError (OSError)           the log cannot be opened, read or written (permission,
        │                                      read-only folder, locked too long, opened read-only)
        ├── LogIntegrityError (ValueError)     duplicate or inconsistent records
        └── LogMismatchError (ValueError)      re-analysis asks for what the log cannot give
                                               (other noise_sd, more samples than logged ...)

Warnings (``warnings.warn``; the call goes on)::

    DenoiserNoiseLevelWarning (UserWarning)    a denoiser is used at a σ it was not trained for

Messages say what was wrong and how to fix it. They never contain secrets.
"""

from __future__ import annotations

__all__ = [
    "RobustAPIError",
    "InvalidInputError",
    "InvalidImageError",
    "ImageTooLargeError",
    "InvalidParameterError",
    "UnknownProviderError",
    "ProviderError",
    "ProviderResponseError",
    "TransientProviderError",
    "CredentialsError",
    "BudgetExceededError",
    "DenoiserError",
    "OfflineModeError",
    "MissingDependencyError",
    "QueryLogError",
    "NotAQueryLogError",
    "UnsafePickleError",
    "UntrustedLogError",
    "LogAccessError",
    "LogIntegrityError",
    "LogMismatchError",
    "LogConflictError",
    "MixedExperimentsError",
    "WorkerLostError",
    "DenoiserNoiseLevelWarning",
]


class RobustAPIError(Exception):
    """Base class of every error raised on purpose by robust_api."""


class InvalidInputError(RobustAPIError, ValueError):
    """An argument is invalid. Raised before any (paid) query is sent."""


class InvalidImageError(InvalidInputError):
    """The image is not usable: wrong type, shape, dtype, value range, or unreadable file."""


class ImageTooLargeError(InvalidImageError):
    """The image has more pixels than the limit (the provider's input limit, ``max_pixels``,
    or Pillow's decompression-bomb guard), or one noisy copy per request in flight does not
    fit the memory budget (``memory_limit_mb``). Raised before any query or log write; the
    message says which limit and how to proceed (``downscale=True``, a higher limit)."""


class InvalidParameterError(InvalidInputError):
    """A numeric parameter (noise_sd, alpha, N, N0, seed, ...) is out of its domain."""


class UnknownProviderError(RobustAPIError, ValueError):
    """The provider name is not registered; the message lists the registered names."""


class ProviderError(RobustAPIError, RuntimeError):
    """The provider (API, local model or callable) failed while answering a batch."""


class ProviderResponseError(ProviderError, ValueError):
    """The provider answered, but not with one string label (or raw response) per image."""


class TransientProviderError(ProviderError):
    """A failure worth retrying: throttling, a 5xx, a timeout, a dropped connection or a
    malformed body. Raised by provider adapters; the dispatcher retries with backoff and,
    when the attempts are used up, records the samples as failed (votes against the top class).

    Attributes:
        kind: "throttled", "server", "timeout", "connection" or "malformed".
        retry_after: seconds the provider asked to wait (Retry-After), or None.
    """

    KINDS = ("throttled", "server", "timeout", "connection", "malformed")

    def __init__(self, kind: str, message: str, retry_after: "float | None" = None):
        if kind not in self.KINDS:
            raise ValueError(f"unknown transient failure kind {kind!r}; one of {self.KINDS}")
        super().__init__(message)
        self.kind = kind
        self.retry_after = retry_after


class CredentialsError(ProviderError):
    """Credentials are missing or were refused. The message names where they are read from
    (environment variables, files); it never contains the secret itself."""


class BudgetExceededError(RobustAPIError, RuntimeError):
    """Sending the next query would cross ``max_queries`` or ``max_cost_usd``. Raised before a
    fixed-N call starts when the whole call does not fit, and mid-call only when retries
    use up what was left; nothing above the cap is ever sent."""


class DenoiserError(RobustAPIError, RuntimeError):
    """A denoiser could not be loaded (unknown name, unreadable or mismatched checkpoint, wrong
    channel count), raised, or returned an array of the wrong shape or with non-finite values."""


class OfflineModeError(RobustAPIError, RuntimeError):
    """An online action (sending queries) was requested from an offline RobustAPI."""


class MissingDependencyError(RobustAPIError, ImportError):
    """An optional dependency is not installed; the message carries the install command."""


class QueryLogError(RobustAPIError):
    """Base class of query-log problems."""


class NotAQueryLogError(QueryLogError, ValueError):
    """The path exists but is not a robust_api query log; the file is left untouched."""


class UnsafePickleError(NotAQueryLogError):
    """A predecessor pickle names a global other than plain data (it would run code): refused, nothing ran."""


class UntrustedLogError(NotAQueryLogError):
    """An SQLite file claims to be a query log but its schema is not exactly the one the store
    creates: a trigger, a view, another table, index or column, a changed type or constraint.
    Such a file could show or store other votes than its tables hold; it is refused before any
    row is read or written, and left untouched. The message names the first difference."""


class LogAccessError(QueryLogError, OSError):
    """The log cannot be opened, read or written: permission denied, a folder where the
    file's ``-wal``/``-shm`` side files cannot be created, a database locked by another
    process for longer than the timeout, or a write to a log opened read-only
    (``robust_api.open_log``). The message says what to change."""


class LogIntegrityError(QueryLogError, ValueError):
    """The log contradicts itself (e.g. two records for one sample index)."""


class LogMismatchError(QueryLogError, ValueError):
    """Re-analysis asks for something the log cannot give (other noise_sd, more samples)."""


class LogConflictError(QueryLogError, ValueError):
    """Two logs disagree about the same thing: one call id with different headers, or one
    sample of one call with different answers. A merge refuses them before writing anything."""


class MixedExperimentsError(QueryLogError, ValueError):
    """Logs (shards) to merge come from different experiments (σ, seed, provider, model
    version, denoiser, settings): refused, naming the field that differs."""


class WorkerLostError(RobustAPIError, RuntimeError):
    """A distributed run lost workers more often than it may retry an image; the message
    names the images and what happened to them (their logged answers stay in the shards)."""


class DenoiserNoiseLevelWarning(UserWarning):
    """A denoiser is used at a noise level σ it was not trained for: more than 10% (relative)
    from its trained ``noise_sd``, or outside a σ-conditioned denoiser's ``noise_sd_range``.
    Issued once per (denoiser, σ) by the runner. The certificate stays valid (the denoiser is
    part of the base classifier) but is likely weaker than with a denoiser trained for that σ."""
