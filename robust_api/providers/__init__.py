"""Providers: the base classifiers behind RobustAPI (contract, registry, built-in adapters).

The cloud adapters (``google``, ``aws``, ``azure``, ``clarifai``, ``http``) live in their own
modules and are imported only when their name is used, so their SDKs stay optional.
"""

from .base import ENTRY_POINT_GROUP, Provider, QueryFailure, create_provider, known_providers, register_provider
from .callable import CallableProvider

__all__ = [
    "Provider", "QueryFailure", "CallableProvider", "create_provider", "known_providers", "register_provider",
    "ENTRY_POINT_GROUP",
]
