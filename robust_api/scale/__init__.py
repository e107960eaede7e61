"""Scale-out: certify datasets on a Ray cluster with one rate limit, one budget and one log.

``RobustAPI.certify_many(..., engine="ray")`` (and ``robust-api certify --ray``) run
:class:`~robust_api.scale.ray_engine.RayRun`; :mod:`~robust_api.scale.quota` shares the rate
limit and the caps between processes; :mod:`~robust_api.scale.shards` gives each worker its
own log shard. Ray is the optional ``[ray]`` extra; nothing here imports it at import time.
"""

from .quota import RemoteBudget, RemoteRateLimiter, SharedQuota
from .ray_engine import RAY_INSTALL, RayRun, RunReport, require_ray

__all__ = ["RayRun", "RunReport", "SharedQuota", "RemoteBudget", "RemoteRateLimiter", "require_ray", "RAY_INSTALL"]
