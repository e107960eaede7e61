"""The engine behind :class:`robust_api.RobustAPI`: opening calls, querying their phases,
sequential looks, holds on the caps, and scheduling many images.

Modules, in the order a call meets them:

- :mod:`~robust_api.engine.options`: the checked constructor arguments.
- :mod:`~robust_api.engine.building`: the provider, from a name, an object or a callable.
- :mod:`~robust_api.engine.denoising`: the one seam to a denoiser (or none).
- :mod:`~robust_api.engine.core`: :class:`Engine` — image checks, holds, predict and certify.
- :mod:`~robust_api.engine.calls`: one open call in the log and the noisy requests of a phase.
- :mod:`~robust_api.engine.looks`: a sequential call's looks.
- :mod:`~robust_api.engine.scheduling`: ``certify_many`` and ``certify_batch``.

Sending (retries, rate limits, caps, threads) is :mod:`robust_api.dispatch`; the numbers of a
result are :mod:`robust_api.offline` on the log the engine has just written.
"""

from .building import make_provider
from .calls import Call, NoisyBatches
from .core import Engine
from .denoising import CallableDenoiser, Denoising, make_denoiser
from .looks import SequentialRun
from .options import EngineOptions

__all__ = [
    "Engine", "EngineOptions", "Call", "NoisyBatches", "SequentialRun", "Denoising", "CallableDenoiser",
    "make_denoiser", "make_provider",
]
