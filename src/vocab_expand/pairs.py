"""Strategy pairs: "subword/mean" (input/output) or one name for both sides, parsed against the registry.

Left out: what a pair does (strategies/, rows/).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

from .errors import InvalidInputError
from .strategies import STRATEGIES


@dataclass(frozen=True)
class StrategyPair:
    """An input/output strategy pair; "mean" alone means mean/mean."""

    input: str
    output: str

    @property
    def name(self) -> str:
        return self.input if self.input == self.output else f"{self.input}/{self.output}"

    @classmethod
    def parse(cls, spec: str) -> "StrategyPair":
        parts = spec.strip().split("/")
        if len(parts) not in (1, 2) or not all(parts):
            raise InvalidInputError(f"strategy {spec!r} must be NAME or INPUT/OUTPUT, e.g. subword/mean")
        for name in parts:
            if name not in STRATEGIES:
                raise InvalidInputError(f"unknown strategy {name!r} in {spec!r}; choose from: {', '.join(sorted(STRATEGIES))}")
        return cls(parts[0], parts[-1])


def parse_strategies(specs: Iterable[str] | str) -> list[StrategyPair]:
    """Strategy pairs from names or a comma-separated string; duplicates removed, order kept."""
    items = specs.split(",") if isinstance(specs, str) else list(specs)
    pairs = list(dict.fromkeys(StrategyPair.parse(s) for s in items if s.strip()))
    if not pairs:
        raise InvalidInputError("no strategies given, e.g. strategies=['zeros', 'mean', 'subword/mean']")
    return pairs


def ran_label(name: str, row: dict[str, Any]) -> str:
    """A pair's name, with what actually ran when that differs (a tied model's shared row); ``row`` holds the
    input_strategy and output_strategy that ran. Example:
    ("distill/fit", {"input_strategy": "joint", "output_strategy": "joint"}) -> "distill/fit (ran joint)"."""
    ran = StrategyPair(row["input_strategy"], row["output_strategy"]).name
    return name if ran == name else f"{name} (ran {ran})"
