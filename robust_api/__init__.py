"""robust_api: certified-robust predictions from image-classification APIs and local models.

Denoised smoothing (Salman et al. 2020) on randomized smoothing (Cohen et al. 2019): query
the base classifier on Gaussian-noised (optionally denoised) copies of an image, take the
vote, and certify an L2 radius with a Clopper–Pearson bound. Every query is recorded in a
replayable query log; offline mode re-predicts and re-certifies from logs alone.
"""

from . import denoisers  # lazy: torch is imported on first use of a denoiser
from .api import RobustAPI
from .errors import *  # noqa: F403 - the exception tree, listed in errors.__all__
from .errors import __all__ as _error_names
from .dispatch import RetryPolicy, Spending
from .providers import CallableProvider, Provider, QueryFailure, known_providers, register_provider
from .query_logs import CallLog, QueryLog, QueryRecord, export_jsonl, export_parquet, open_log
from .planning import BudgetPlan, plan
from .analysis import analyze
from .query_logs.legacy import import_legacy, read_legacy_tsv
from .results import ABSTAIN, Certificate, Prediction

__version__ = "0.1.0"


def load_denoiser(name_or_path, device=None, *, noise_sd=None):
    """Load a denoiser by shipped name (``robust_api.denoisers.available()``) or file path.

    A float [B, C, H, W] in [0, 1] → same ``torch.nn.Module`` in eval mode on ``device``; see
    :func:`robust_api.denoisers.load_denoiser` for the formats and errors. (Defined here so that
    ``import robust_api`` stays fast: torch is imported on first use.)
    """
    from .denoisers.loading import load_denoiser as _load_denoiser

    return _load_denoiser(name_or_path, device=device, noise_sd=noise_sd)

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
