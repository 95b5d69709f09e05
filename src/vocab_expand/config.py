"""The one place where expansion defaults are defined.

Every default carries its reason. The CLI reads its defaults from these fields, so the library and
the command line can never disagree. The full config is saved next to every output (expansion.json).

Deliberately left out: anything about loading, diagnosis or training; those have their own options.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal
from .errors import InvalidInputError, InvalidTypeError

# Smallest fit_max_positions: four chunks of 256 tokens. With fewer, the sample can hold no anchor at all, or
# none in the calibration slice (measured: 1, 10 and 100 failed on kjv, with an IndexError or "give more text").
MIN_FIT_POSITIONS = 1024

WordForms = Literal["mid", "initial", "both"]
TiePolicy = Literal["auto", "output", "input", "untie"]
TokenKind = Literal["vocab", "added"]


@dataclass(frozen=True)
class ExpandConfig:
    """Options of :func:`vocab_expand.expand`."""

    # "auto": with domain text, distill/fit (measured: held-out bits per character at or below the original
    # model's, BENCHMARKS.md); without, subword (FVT: the mean of the word's old pieces keeps what the model
    # knew) and mean (safety: KL(old || new) <= log(1 + k/n) on any model, Hewitt).
    input_init: str = "auto"
    output_init: str = "auto"
    # Every random step is seeded: the same seed gives the same bytes.
    seed: int = 0
    # None keeps the smallest row count; a multiple such as 64 helps tensor cores.
    pad_to_multiple_of: int | None = None
    # "mid" (" word") is the form that occurs in running text; "both" adds the sentence-initial form too.
    forms: WordForms = "mid"
    # Tied models have one row per token. When the two strategies differ, the output strategy sets it
    # ("output"), because the output row is what decides whether the model's distribution survives.
    # "auto" does that too, except that it unties for fit/distill, whose rows only make sense on their side.
    tie_policy: TiePolicy = "auto"
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
    # fit/distill only. Cap on positions of domain text run through the model and cached (hidden states,
    # P x d floats). None: what min_sampled_occurrences per word costs, between 24,576 and 131,072 (sampling.py);
    # 24k is about a minute of forward passes for SmolLM2 on 2 CPU cores and 55 MB of states.
    fit_max_positions: int | None = None
    # Strength of the L2 pull of fitted output rows toward the mean row; None: chosen on the calibration slice.
    fit_reg: float | None = None
    # Share of the sampled training documents kept aside to choose fit_reg and stop distillation early.
    calibration_fraction: float = 0.2
    # Expected occurrences per word in the sample: rare words are sampled more often (and weighted down).
    min_sampled_occurrences: int = 8
    # Words seen fewer times than this in the fitting part of the sample keep the fallback rows.
    min_occurrences: int = 2
    # Distillation: contexts per word, tokens of left context, tokens matched after the word, epochs.
    # Measured on SmolLM2 (100 words): 8 contexts, 12 tokens, 4 after, 4 epochs take about a minute.
    distill_contexts: int = 8
    distill_context_tokens: int = 12
    distill_window: int = 4
    distill_epochs: int = 4
    # Cap on fitting windows over all words, since distillation's cost grows with k: 1,000 words keep 8
    # contexts each, 2,000 get 4, never fewer than min_occurrences. None: distill_contexts for every word.
    # Measured on SmolLM2, 1,000 words: 4 contexts each cost 0.47 points of bits per character (BENCHMARKS.md).
    distill_max_windows: int | None = 8192

    def __post_init__(self) -> None:
        if self.pad_to_multiple_of is not None:
            if isinstance(self.pad_to_multiple_of, bool) or not isinstance(self.pad_to_multiple_of, int):
                raise InvalidTypeError(
                    f"pad_to_multiple_of must be a positive int or None, got {self.pad_to_multiple_of!r}"
                )
            if self.pad_to_multiple_of <= 0:
                raise InvalidInputError(f"pad_to_multiple_of must be positive, got {self.pad_to_multiple_of}")
        _check_choice("forms", self.forms, ("mid", "initial", "both"))
        _check_choice("tie_policy", self.tie_policy, ("auto", "output", "input", "untie"))
        _check_choice("kind", self.kind, ("vocab", "added"))
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise InvalidTypeError(f"seed must be an int, got {self.seed!r}")
        if not self.cov_scale >= 0:
            raise InvalidInputError(f"cov_scale must be >= 0, got {self.cov_scale}")
        for name in ("min_sampled_occurrences", "distill_contexts", "distill_window"):
            _check_int(name, getattr(self, name), minimum=1)
        if self.fit_max_positions is not None:  # below this, the sample may hold no text to fit or calibrate on
            _check_int("fit_max_positions", self.fit_max_positions, minimum=MIN_FIT_POSITIONS)
        if self.distill_max_windows is not None:
            _check_int("distill_max_windows", self.distill_max_windows, minimum=1)
        for name in ("min_occurrences", "distill_context_tokens", "distill_epochs"):
            _check_int(name, getattr(self, name), minimum=0)
        if not 0.0 < self.calibration_fraction < 1.0:
            raise InvalidInputError(f"calibration_fraction must be between 0 and 1, got {self.calibration_fraction}")
        if self.fit_reg is not None and not self.fit_reg >= 0:
            raise InvalidInputError(f"fit_reg must be >= 0 or None (chosen on the calibration slice), got {self.fit_reg}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def resolved(self, has_text: bool) -> "ExpandConfig":
        """This config with "auto" strategies replaced: distill/fit with domain text, subword/mean without."""
        auto = AUTO_WITH_TEXT if has_text else AUTO_WITHOUT_TEXT
        return dataclasses.replace(
            self,
            input_init=auto[0] if self.input_init == AUTO else self.input_init,
            output_init=auto[1] if self.output_init == AUTO else self.output_init,
        )


def _check_int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InvalidInputError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _check_choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise InvalidInputError(f"{name} must be one of {', '.join(choices)}; got {value!r}")


AUTO = "auto"
AUTO_WITH_TEXT = ("distill", "fit")
AUTO_WITHOUT_TEXT = ("subword", "mean")
DEFAULTS = ExpandConfig()
