"""Token planning: check the words, plan their vocabulary entries through the tokenizer's family, and build
the extended tokenizer. The strategy-independent half of an expansion: diagnose and compare plan once and
try many strategies on the same plan.

Left out: the families' rules (families/), the tokenizer surgery (tokenization.py), rows (rows.py).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import Iterable

from transformers import PreTrainedTokenizerBase

from .config import ExpandConfig
from .errors import InvalidInputError
from .families import NewEntry, detect_family
from .tokenization import (
    Skipped,
    check_words,
    next_free_id,
    plan_added_tokens,
    plan_words,
    tokenizer_from_spec,
    tokenizer_spec,
    with_added_tokens,
)


@dataclass
class TokenPlan:
    """The strategy-independent half of an expansion: the extended tokenizer and the new entries."""

    tokenizer: PreTrainedTokenizerBase
    family: str
    tokens_before: int
    words_given: int
    entries: list[NewEntry]
    new_token_ids: list[int]
    skipped: list[Skipped]
    seconds: float

    @property
    def pieces(self) -> list[list[int]]:
        return [list(e.pieces) for e in self.entries]


def plan_tokens(tokenizer: PreTrainedTokenizerBase, words: Iterable[str], config: ExpandConfig) -> TokenPlan:
    """Check the words, plan their entries through the tokenizer's family, and build the new tokenizer."""
    word_list = check_words(words)
    start = time.perf_counter()
    spec = tokenizer_spec(tokenizer)
    first_id = next_free_id(spec)
    if first_id != len(tokenizer):
        raise InvalidInputError(f"tokenizer ids are not contiguous: next free id {first_id}, len(tokenizer) {len(tokenizer)}")
    if config.kind == "added":
        family_name, plan = "added", plan_added_tokens(tokenizer, word_list)
    else:
        family = detect_family(spec)
        family_name, plan = family.name, plan_words(family, word_list, config.forms)
    new_ids = list(range(first_id, first_id + len(plan.entries)))
    if not plan.entries:
        new_tokenizer = tokenizer if config.inplace else copy.deepcopy(tokenizer)
    elif config.kind == "added":
        flags = dict(lstrip=config.lstrip, rstrip=config.rstrip, single_word=config.single_word,
                     normalized=config.normalized)
        new_tokenizer = with_added_tokens(tokenizer, plan.entries, flags, config.special)
    else:
        new_tokenizer = tokenizer_from_spec(tokenizer, family.extend(list(zip(plan.entries, new_ids))))
    return TokenPlan(new_tokenizer, family_name, len(tokenizer), len(word_list), plan.entries, new_ids,
                     plan.skipped, time.perf_counter() - start)
