"""robust_api: certified-robust predictions from image-classification APIs and local models.

Denoised smoothing (Salman et al. 2020) on randomized smoothing (Cohen et al. 2019): query
the base classifier on Gaussian-noised (optionally denoised) copies of an image, take the
vote, and certify an L2 radius with a Clopper–Pearson bound. Every query is recorded in a
replayable query log; offline mode re-predicts and re-certifies from logs alone.
"""

import importlib

from .errors import *  # noqa: F403 - the exception tree, listed in errors.__all__
from .errors import __all__ as _error_names

__version__ = "0.1.0"


def load_denoiser(name_or_path, device=None, *, noise_sd=None):
    """Load a denoiser by shipped name (``robust_api.denoisers.available()``) or file path.

    A float [B, C, H, W] in [0, 1] → same ``torch.nn.Module`` in eval mode on ``device``; see
    :func:`robust_api.denoisers.load_denoiser` for the formats and errors. (Defined here so that
    ``import robust_api`` stays fast: torch is imported on first use.)
    """
    from .optional import require_torch

    require_torch("load_denoiser")
    from .denoisers.loading import load_denoiser as _load_denoiser

    return _load_denoiser(name_or_path, device=device, noise_sd=noise_sd)

# Everything else is imported on first use (PEP 562), so that ``import robust_api`` takes a few
# tens of milliseconds: numpy, scipy and (for denoisers and local models) torch load when the
# name that needs them is first touched.
_HOMES = {
    "RobustAPI": "api", "ABSTAIN": "results", "Prediction": "results", "Certificate": "results",
    "plan": "planning", "BudgetPlan": "planning", "analyze": "analysis",
    "import_legacy": "query_logs.legacy", "read_legacy_tsv": "query_logs.legacy",
    "open_log": "query_logs", "merge_logs": "query_logs", "export_jsonl": "query_logs", "export_parquet": "query_logs",
    "CallLog": "query_logs", "QueryLog": "query_logs", "QueryRecord": "query_logs",
    "Provider": "providers", "QueryFailure": "providers", "CallableProvider": "providers",
    "known_providers": "providers", "register_provider": "providers",
    "RetryPolicy": "dispatch", "Spending": "dispatch",
    "to_pandas": "frames", "write_results": "frames", "read_results": "frames",
}


def __getattr__(name):
    home = _HOMES.get(name)
    if home is None:
        if name in _SUBPACKAGES:
            return importlib.import_module(f"{__name__}.{name}")
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__) | _SUBPACKAGES)


_SUBPACKAGES = {"denoisers", "models", "providers", "query_logs", "analysis", "emulators", "engine"}

__all__ = [
    "RobustAPI",
    "load_denoiser",
    "ABSTAIN",
    "Prediction",
    "Certificate",
    "plan",
    "BudgetPlan",
    "analyze",
    "import_legacy",
    "read_legacy_tsv",
    "open_log",
    "export_jsonl",
    "export_parquet",
    "merge_logs",
    "to_pandas",
    "write_results",
    "read_results",
    "CallLog",
    "QueryLog",
    "QueryRecord",
    "Provider",
    "QueryFailure",
    "CallableProvider",
    "RetryPolicy",
    "Spending",
    "known_providers",
    "register_provider",
    "__version__",
    *_error_names,
]
