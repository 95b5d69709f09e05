"""Initialization strategies for new embedding rows, registered by name.

Importing this package registers every built-in strategy; `STRATEGIES` maps names to classes and
`get_strategy(name)` returns an instance. A new strategy is one module with a `@register_strategy` class:
the CLI's choices come from the registry, so it needs no other change.
"""

from . import distill, fit, hf_default, mean, mean_cov, random_normal, subword, zeros  # noqa: F401  (registers them)
from .base import STRATEGIES, RowRequest, Strategy, get_strategy, register_strategy

__all__ = ["STRATEGIES", "RowRequest", "Strategy", "get_strategy", "register_strategy"]
