"""The skeleton every initialization strategy shares, and the one registry of strategies by name.

A strategy turns the old rows of one matrix (input embeddings, output head, or head bias) into rows for
the new tokens. It is pure tensor maths: it never sees a model, a tokenizer or a file, which is why it
can be tested by hand and reused by diagnostics without building an expanded model.

Left out: where rows go, tied weights, padding rows (resize.py owns those).
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor

from .. import stats
from ..errors import InvalidInputError


@dataclass(frozen=True)
class RowRequest:
    """What a strategy may use to build k new rows.

    pieces: for each new token, the old ids its text tokenized to before expansion (k lists).
    reference_rows: rows [0, reference_rows) of the old matrix are real tokens (rows past it are
        spare padding rows, untrained in many models) and are the ones statistics are taken over.
    generator: the only source of randomness.
    initializer_range: the model's config.initializer_range (std of its random init).
    options: strategy options from ExpandConfig (e.g. cov_scale).
    """

    pieces: list[list[int]]
    reference_rows: int
    generator: torch.Generator
    initializer_range: float = 0.02
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def k(self) -> int:
        return len(self.pieces)


class Strategy(ABC):
    """Base class. Subclasses set name, summary and source, and implement rows()."""

    name: ClassVar[str]
    summary: ClassVar[str]
    source: ClassVar[str]
    # Data-driven strategies (fit, distill) refine rows() on domain text; rows() is then their starting point
    # and the fallback for words seen too rarely. They need a corpus and serve one side only.
    needs_corpus: ClassVar[bool] = False
    sides: ClassVar[tuple[str, ...]] = ("input", "output")

    @abstractmethod
    def rows(self, old: Tensor, request: RowRequest) -> Tensor:
        """New rows for the k tokens: float32 [k, d], from the old matrix ``old`` [n_old, d]."""

    def bias(self, old: Tensor, request: RowRequest) -> Tensor:
        """New entries of an output bias: float32 [k]. Default: the rows() rule on the bias as a column."""
        return self.rows(old.unsqueeze(1), request).squeeze(1)

    @staticmethod
    def reference(old: Tensor, request: RowRequest) -> Tensor:
        """The rows statistics are taken over: [reference_rows, d]."""
        return old[: request.reference_rows]

    @staticmethod
    def repeat_mean(old: Tensor, request: RowRequest) -> Tensor:
        """The reference rows' mean, repeated k times: float32 [k, d]."""
        return stats.row_mean(Strategy.reference(old, request)).expand(request.k, -1).clone()


_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
STRATEGIES: dict[str, type[Strategy]] = {}


def register_strategy(cls: type[Strategy]) -> type[Strategy]:
    """Class decorator: add a strategy to the registry. Rejects bad and duplicate names."""
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"strategy name must match {_NAME.pattern}, got {name!r} on {cls.__name__}")
    if name in STRATEGIES:
        raise ValueError(f"a strategy named {name!r} is already registered ({STRATEGIES[name].__name__})")
    if not (isinstance(cls, type) and issubclass(cls, Strategy)):
        raise TypeError(f"{cls!r} is not a Strategy subclass")
    STRATEGIES[name] = cls
    return cls


def get_strategy(name: str) -> Strategy:
    """An instance of the registered strategy ``name``; a clear error naming the choices otherwise."""
    if not isinstance(name, str) or name not in STRATEGIES:
        raise InvalidInputError(f"unknown strategy {name!r}; choose one of: {', '.join(sorted(STRATEGIES))}")
    return STRATEGIES[name]()
