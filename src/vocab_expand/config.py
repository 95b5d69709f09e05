"""The one place where expansion defaults are defined.

Every default carries its reason. The CLI reads its defaults from these fields, so the library and
the command line can never disagree. The full config is saved next to every output (expansion.json).

Deliberately left out: anything about loading, diagnosis or training; those have their own options.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

WordForms = Literal["mid", "initial", "both"]
TiePolicy = Literal["output", "input", "untie"]
TokenKind = Literal["vocab", "added"]


@dataclass(frozen=True)
class ExpandConfig:
    """Options of :func:`vocab_expand.expand`."""

    # Meaning for the input side: the mean of the word's old pieces (FVT) keeps what the model knew.
    input_init: str = "subword"
    # Safety for the output side: mean rows bound KL(old || new) by log(1 + k/n) on any model (Hewitt).
    output_init: str = "mean"
    # Every random step is seeded: the same seed gives the same bytes.
    seed: int = 0
    # None keeps the smallest row count; a multiple such as 64 helps tensor cores.
    pad_to_multiple_of: int | None = None
    # "mid" (" word") is the form that occurs in running text; "both" adds the sentence-initial form too.
    forms: WordForms = "mid"
    # Tied models have one row per token. When the two strategies differ, the output strategy sets it
    # by default, because the output row is what decides whether the model's distribution survives.
    tie_policy: TiePolicy = "output"
    # Variance scale s of mean_cov: N(mu, s * Sigma). Small, so rows differ but logits barely move.
    cov_scale: float = 1e-5
    # "vocab": real vocabulary entries, spaces kept. "added": tokenizer added tokens (control strings).
    kind: TokenKind = "vocab"
    # Added-token mode only: never special by default, since servers skip special tokens when decoding.
    special: bool = False
    # Added-token mode only, the flags tokenizers know. Control strings match the raw text exactly by default.
    lstrip: bool = False
    rstrip: bool = False
    single_word: bool = False
    normalized: bool = False
    # Leave the caller's model and tokenizer untouched unless asked.
    inplace: bool = False

    def __post_init__(self) -> None:
        if self.pad_to_multiple_of is not None:
            if isinstance(self.pad_to_multiple_of, bool) or not isinstance(self.pad_to_multiple_of, int):
                raise TypeError(
                    f"pad_to_multiple_of must be a positive int or None, got {self.pad_to_multiple_of!r}"
                )
            if self.pad_to_multiple_of <= 0:
                raise ValueError(f"pad_to_multiple_of must be positive, got {self.pad_to_multiple_of}")
        _check_choice("forms", self.forms, ("mid", "initial", "both"))
        _check_choice("tie_policy", self.tie_policy, ("output", "input", "untie"))
        _check_choice("kind", self.kind, ("vocab", "added"))
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise TypeError(f"seed must be an int, got {self.seed!r}")
        if not self.cov_scale >= 0:
            raise ValueError(f"cov_scale must be >= 0, got {self.cov_scale}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _check_choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}; got {value!r}")


DEFAULTS = ExpandConfig()
