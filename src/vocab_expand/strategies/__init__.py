"""Initialization strategies for new embedding rows, registered by name.

Importing this package registers every built-in strategy; `STRATEGIES` maps names to classes and
`get_strategy(name)` returns an instance. A new strategy is one module (or, for a data-driven one with its own
maths, one folder) with a `@register_strategy` class, plus its name in the import line below, which is what
registers a built-in (a plug-in registers itself wherever it is imported). The CLI's choices and options come
from the registry, so it needs no other change; tests/test_architecture.py checks that every module here is
imported and registers a strategy.

Left out: the strategies themselves (one module or folder each) and the registry's rules (base.py).
"""

from . import distill, fit, hf_default, joint, mean, mean_cov, random_normal, subword, zeros  # noqa: F401  (registers them)
from .base import NEEDS, STRATEGIES, DataDrivenStrategy, Learned, RowRequest, Strategy, get_strategy, register_strategy

__all__ = ["NEEDS", "STRATEGIES", "DataDrivenStrategy", "Learned", "RowRequest", "Strategy", "get_strategy",
           "register_strategy"]
