"""`distill` (input rows): new input rows that make the frozen model behave as it did on the word's pieces.

Start from `subword` and optimize only the new input rows, so that the hidden states at the new token and a
short window after it match those the original model produces on the original pieces, over the contexts
where the word occurs in the domain text (Token Distillation, Dobler et al. 2026). All words are
distilled together; a calibration slice stops it early. Words seen too rarely keep `subword` rows.

Needs: the domain sample and its occurrence windows. The maths is in maths.py.

Left out: sampling and windows (learning/), writing rows (rows/).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from ...options import check_int, opt
from ..base import DataDrivenStrategy, Learned, RowRequest, register_strategy
from ..subword import Subword

if TYPE_CHECKING:
    from ...learning.context import LearnContext


@dataclass(frozen=True)
class DistillOptions:
    """Options of `distill` (ExpandConfig aliases: distill_contexts, distill_context_tokens, ...).

    Measured on SmolLM2 (100 words): 8 contexts, 12 tokens, 4 after, 4 epochs take about a minute."""

    contexts: int = opt(8, "distill: contexts per word")
    context_tokens: int = opt(12, "distill: tokens of left context")
    window: int = opt(4, "distill: tokens matched after the word")
    epochs: int = opt(4, "distill: epochs")
    # Cap on windows over all words, since distillation's cost grows with k: 1,000 words keep 8 contexts each,
    # 2,000 get 4, never fewer than min_occurrences. None: `contexts` for every word. Measured on SmolLM2,
    # 1,000 words: 4 contexts each cost 0.47 points of bits per character (BENCHMARKS.md).
    max_windows: int | None = opt(8192, "distill: cap on contexts over all words; fewer per word for large word "
                                         "lists, never fewer than min_occurrences")
    # Prefix key/value caches kept between steps, in bytes; batches beyond read their prefix again at each use
    # (exact, slower). None: half the free memory, at most half the model's weights and 4 GiB (1,000 words on
    # SmolLM2 would keep about 6 GB; on a 7B model 130 GB). 0: never keep one.
    cache_budget: int | None = opt(None, "distill: bytes of prefix key/value caches kept between steps; prefixes "
                                         "beyond are read again at each step (0: keep none; default: half the "
                                         "free memory, at most half the model's weights and 4 GiB)")

    def __post_init__(self) -> None:
        check_int("distill_contexts", self.contexts, minimum=1)
        check_int("distill_window", self.window, minimum=1)
        check_int("distill_context_tokens", self.context_tokens, minimum=0)
        check_int("distill_epochs", self.epochs, minimum=0)
        if self.max_windows is not None:
            check_int("distill_max_windows", self.max_windows, minimum=1)
        if isinstance(self.cache_budget, float) and self.cache_budget.is_integer():  # "--distill-cache-budget 4e9"
            object.__setattr__(self, "cache_budget", int(self.cache_budget))
        if self.cache_budget is not None:
            check_int("distill_cache_budget", self.cache_budget, minimum=0)


def contexts_per_word(k: int, options: DistillOptions, min_occurrences: int) -> int:
    """options.contexts, lowered so that k words stay within max_windows, but never below min_occurrences
    (fewer would make every word fall back). E.g. contexts 8, max_windows 4096: k=1000 -> 4, k=5000 -> 2."""
    if options.max_windows is None:
        return options.contexts
    return min(options.contexts, max(min_occurrences, 1, options.max_windows // max(1, k)))


@register_strategy
class Distill(DataDrivenStrategy):
    name = "distill"
    summary = "input rows distilled to reproduce the model's states on the word's pieces; needs a corpus"
    source = "Dobler et al. 2026, Token Distillation"
    sides = ("input",)
    options_class = DistillOptions
    needs = frozenset({"sample", "windows"})

    def rows(self, old: Tensor, request: RowRequest) -> Tensor:
        """The starting point and the fallback: subword rows."""
        return Subword().rows(old, request)

    def sample_tail(self, options: DistillOptions) -> int:
        return options.window

    def learn(self, context: "LearnContext", start: Tensor, start_bias: Tensor | None,
              options: DistillOptions) -> Learned:
        from ...learning.windows import select_windows
        from .maths import distill_rows

        min_occurrences = context.config.sampling.min_occurrences
        per_word = contexts_per_word(context.k, options, min_occurrences)
        windows = select_windows(context.windows(options.context_tokens, options.window), per_word)
        seen = torch.bincount(torch.tensor([w.word for w in windows if not w.calibration], dtype=torch.long),
                              minlength=context.k)
        free = seen >= max(1, min_occurrences)
        report: dict[str, Any]
        if not free.any():
            report = {"fallback_words": context.words,
                      "note": "no word occurs often enough in the sample to distill"}
            return Learned(start, None, report)
        result = distill_rows(context.model, windows, start, context.tokens_before, free=free, epochs=options.epochs,
                              seed=context.config.seed, progress=context.progress,
                              cache_budget=options.cache_budget)
        result.report["fallback_words"] = [w for w, f in zip(context.words, free.tolist()) if not f]
        result.report["contexts_per_word"] = per_word
        return Learned(result.rows, None, result.report)
