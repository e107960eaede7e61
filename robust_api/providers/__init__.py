"""Providers: the base classifiers behind RobustAPI (contract, registry, built-in adapters)."""

from .base import ENTRY_POINT_GROUP, Provider, create_provider, known_providers, register_provider
from .callable import CallableProvider

__all__ = ["Provider", "CallableProvider", "create_provider", "known_providers", "register_provider", "ENTRY_POINT_GROUP"]
