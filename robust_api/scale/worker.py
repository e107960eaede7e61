"""A worker of a distributed run: its own provider, denoiser (on its own device) and log
shard; the run's one rate limit and one budget, through the quota actor.

:class:`ShardWorker` is plain Python; :mod:`robust_api.scale.ray_engine` makes it a Ray actor.
It certifies one canonical image per call exactly as the in-process engine does
(:meth:`robust_api.engine.Engine.certify`), and returns the call as the shard holds it; the
driver merges it into its own log and certifies from there.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ..engine import Engine, make_denoiser, make_provider
from ..engine.options import EngineOptions
from ..offline import CertifySettings
from .quota import Caller, RemoteBudget, RemoteHold, RemoteRateLimiter
from .shards import ShardLog

__all__ = ["ShardWorker"]

logger = logging.getLogger(__name__)


class ShardWorker:
    """Certifies images for a distributed run.

    Args:
        recipe: what builds this run's provider, denoiser and engine options
            (``RobustAPI.worker_recipe()``); the log, the caps and the rate are this
            worker's shard and the run's shared quota instead.
        shard: this worker's SQLite shard.
        reuse_log: the run's reuse log (read for reusable answers; see :mod:`robust_api.scale.shards`).
        call: ``call(method, *args)`` on the run's :class:`~robust_api.scale.quota.SharedQuota`.
        rate: the run's rate limit (requests per second; None: none); slack_s: see
            :class:`~robust_api.scale.quota.SharedQuota`.
    """

    def __init__(self, recipe: dict, shard: str, reuse_log: str, call: Caller, rate: Optional[float],
                 slack_s: float):
        options = EngineOptions.check(online=True, rate_limit=math.inf, progress=False, max_queries=None,
                                      max_cost_usd=None, **recipe["options"])
        device = recipe["device"]
        provider = make_provider(recipe["provider"], recipe["model"], recipe["class_names"], recipe["label_fn"],
                                 recipe["batch_size"], device, dict(recipe["provider_options"]))
        log = ShardLog(Path(shard), Path(reuse_log))
        self.engine = Engine(provider, make_denoiser(recipe["denoiser"], device), options, RemoteBudget(call), log)
        self.engine.dispatcher.rate_limiter = None if rate is None else RemoteRateLimiter(call, rate, slack_s)
        self.shard = shard

    def ready(self) -> dict:
        """Where this worker runs (pid, host, shard) and its peak resident memory so far (MB)."""
        import resource
        import socket

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KB on Linux
        return {"pid": os.getpid(), "host": socket.gethostname(), "shard": self.shard, "peak_rss_mb": round(peak, 1)}

    def certify(self, index: int, image: np.ndarray, settings: CertifySettings, seed: Optional[int],
                hold: tuple, info: Optional[dict]) -> tuple[int, Any, tuple, str]:
        """Certify one checked canonical image (float32 [H, W, C] in [0, 1]) with the held
        queries ``hold`` = (hold id, queries, cost); returns (index, the call's header, its
        records, its status) as this worker's shard holds them."""
        certificate = self.engine.certify(image, settings, seed, RemoteHold(*hold), info)
        logs = certificate.logs
        return index, logs.header, tuple(logs.records), logs.status

    def close(self) -> None:
        self.engine.close()
        self.engine.log.close()
