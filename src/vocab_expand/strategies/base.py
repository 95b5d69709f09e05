"""The skeleton every initialization strategy shares, and the one registry of strategies by name.

A strategy turns the old rows of one matrix (input embeddings, output head, or head bias) into rows for
the new tokens. Its rows() is pure tensor maths: it never sees a model, a tokenizer or a file, which is why it
can be tested by hand and reused by diagnostics without building an expanded model.

A data-driven strategy (DataDrivenStrategy: fit, distill, or one of your own) also learns its rows from
domain text. It declares what it needs (NEEDS: the domain sample, the hidden states of that sample, the
occurrence windows), its typed options (options_class, a frozen dataclass whose fields carry help text), and
implements learn(context, start, ...), where rows() gave the starting rows and the fallback for rare words.
The orchestration (learning/orchestrate.py) builds the context and runs input-side strategies before
output-side ones; nothing there names a strategy, so a new one is one folder under strategies/. A
data-driven strategy whose sides are ("input", "output") learns the one shared row of a tied model (joint).

Left out: where rows go, tied weights, padding rows (rows/layout.py owns those); the shared data (learning/).
"""

from __future__ import annotations

import dataclasses
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple

import torch
from torch import Tensor

from .. import config, stats
from ..errors import InvalidInputError

if TYPE_CHECKING:
    from ..learning.context import LearnContext


@dataclass(frozen=True)
class RowRequest:
    """What a strategy may use to build k new rows.

    pieces: for each new token, the old ids its text tokenized to before expansion (k lists).
    tokens_before: the old vocabulary size, len(tokenizer) before expansion (the one name for it throughout):
        rows [0, tokens_before) of the old matrix are real tokens (rows past it are spare padding rows,
        untrained in many models) and are the ones statistics are taken over.
    generator: the only source of randomness.
    initializer_range: the model's config.initializer_range (std of its random init).
    options: this strategy's typed options (an instance of its options_class), or None if it has none.
    """

    pieces: list[list[int]]
    tokens_before: int
    generator: torch.Generator
    initializer_range: float = 0.02
    options: Any = None

    @property
    def k(self) -> int:
        return len(self.pieces)


class Strategy(ABC):
    """Base class. Subclasses set name, summary and source, and implement rows()."""

    name: ClassVar[str]
    summary: ClassVar[str]
    source: ClassVar[str]
    # Learns from domain text (DataDrivenStrategy sets it); such strategies need a corpus.
    needs_corpus: ClassVar[bool] = False
    sides: ClassVar[tuple[str, ...]] = ("input", "output")
    # A frozen dataclass of this strategy's options (fields with defaults and metadata help), or None.
    options_class: ClassVar[type | None] = None

    @abstractmethod
    def rows(self, old: Tensor, request: RowRequest) -> Tensor:
        """New rows for the k tokens: float32 [k, d], from the old matrix ``old`` [tokens_before, d]."""

    def bias(self, old: Tensor, request: RowRequest) -> Tensor:
        """New entries of an output bias: float32 [k]. Default: the rows() rule on the bias as a column."""
        return self.rows(old.unsqueeze(1), request).squeeze(1)

    @staticmethod
    def reference(old: Tensor, request: RowRequest) -> Tensor:
        """The rows statistics are taken over: [tokens_before, d]."""
        return old[: request.tokens_before]

    @staticmethod
    def repeat_mean(old: Tensor, request: RowRequest) -> Tensor:
        """The reference rows' mean, repeated k times: float32 [k, d]."""
        return stats.row_mean(Strategy.reference(old, request)).expand(request.k, -1).clone()


# What a data-driven strategy may ask its LearnContext for.
NEEDS = frozenset({"sample", "states", "windows"})
# The sides a data-driven strategy may serve: one side, or both at once (the shared row of a tied model).
DATA_DRIVEN_SIDES = (("input",), ("output",), ("input", "output"))


class Learned(NamedTuple):
    """What learn() returns: rows float32 [k, d], output bias entries [k] (output side with a bias, else None),
    and a JSON-able report (saved in expansion.json under the strategy's name)."""

    rows: Tensor
    bias: Tensor | None
    report: dict[str, Any]


class DataDrivenStrategy(Strategy):
    """A strategy that learns rows from domain text. rows() gives the starting rows and the fallback."""

    needs_corpus = True
    needs: ClassVar[frozenset[str]] = frozenset()

    @classmethod
    def shares_row(cls) -> bool:
        """Learns one row that is both the input and the output row (a tied model's shared row)."""
        return tuple(cls.sides) == ("input", "output")

    def sample_tail(self, options: Any) -> int:
        """Tokens kept after a chunk's last weighted position (context the strategy reads past it)."""
        return 0

    @abstractmethod
    def learn(self, context: "LearnContext", start: Tensor, start_bias: Tensor | None, options: Any) -> Learned:
        """Rows for one side, learned from ``context`` (what ``needs`` declares), starting from ``start`` [k, d]
        (and ``start_bias`` [k] on an output side with a bias). For the output side, context.input_rows holds
        the final input rows; a shared-row strategy (sides ("input", "output")) sets them itself. ``options``
        is an instance of options_class (or None)."""


_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
STRATEGIES: dict[str, type[Strategy]] = {}


def register_strategy(cls: type[Strategy]) -> type[Strategy]:
    """Class decorator: add a strategy to the registry. Rejects bad and duplicate names, classes that are not
    strategies, options that are not dataclasses, and data-driven strategies with unknown needs or sides.

    The one line a new static strategy writes, e.g. in strategies/median.py (then add `median` to the import line
    of strategies/__init__.py)::

        @register_strategy
        class Median(Strategy):
            name, summary, source = "median", "the median of the old rows", "README"

            def rows(self, old: Tensor, request: RowRequest) -> Tensor:
                return old.float().median(dim=0).values.expand(request.k, -1).clone()

    `expand(..., input_init="median")`, `--input-init median` and `diagnose --strategies median` then work."""
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"strategy name must match {_NAME.pattern}, got {name!r} on {cls.__name__}")
    if name in STRATEGIES:
        raise ValueError(f"a strategy named {name!r} is already registered ({STRATEGIES[name].__name__})")
    if not (isinstance(cls, type) and issubclass(cls, Strategy)):
        raise TypeError(f"{cls!r} is not a Strategy subclass")
    if cls.options_class is not None and not dataclasses.is_dataclass(cls.options_class):
        raise TypeError(f"{cls.__name__}.options_class must be a dataclass, got {cls.options_class!r}")
    if issubclass(cls, DataDrivenStrategy):
        if not cls.needs <= NEEDS:
            raise ValueError(f"{cls.__name__}.needs may name only {sorted(NEEDS)}, got {sorted(cls.needs)}")
        if tuple(cls.sides) not in DATA_DRIVEN_SIDES:
            raise ValueError(f"a data-driven strategy learns one side's rows, or the shared row of a tied model "
                             f"(sides ('input', 'output')); {cls.__name__}.sides is {cls.sides}")
    STRATEGIES[name] = cls
    return cls


def get_strategy(name: str) -> Strategy:
    """An instance of the registered strategy ``name``; a clear error naming the choices otherwise."""
    if not isinstance(name, str) or name not in STRATEGIES:
        raise InvalidInputError(f"unknown strategy {name!r}; choose one of: {', '.join(sorted(STRATEGIES))}")
    return STRATEGIES[name]()


config.use_options_lookup(lambda name: get_strategy(name).options_class)  # config names no strategy itself
