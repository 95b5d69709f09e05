"""Token planning: check the words, plan their vocabulary entries through the tokenizer's family, and build
the extended tokenizer. The strategy-independent half of an expansion: diagnose and compare plan once and
try many strategies on the same plan.

Left out: the families' rules (families/), the tokenizer surgery (tokenization.py), rows (rows/).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import Iterable

from transformers import PreTrainedTokenizerBase

from .config import ExpandConfig
from .errors import InvalidInputError
from .families import NewEntry, TokenizerFamily, detect_family
from .tokenization import (
    Skipped,
    WordPlan,
    check_words,
    next_free_id,
    plan_added_tokens,
    plan_words,
    reusable_reserved_ids,
    tokenizer_from_spec,
    tokenizer_spec,
    unproduced,
    with_added_tokens,
)


@dataclass
class TokenPlan:
    """The strategy-independent half of an expansion: the extended tokenizer and the new entries.

    new_token_ids[i] is entries[i]'s id: ids of reused reserved tokens (below tokens_before) first, then
    consecutive ids from tokens_before.
    """

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

    def require_appended(self, what: str) -> None:
        """InvalidInputError when some new id reuses a reserved token: ``what`` (diagnose, compare) measures the
        new tokens as the ids after the old vocabulary."""
        if any(i < self.tokens_before for i in self.new_token_ids):
            raise InvalidInputError(f"{what} measures new tokens as the ids after the old vocabulary, so it does not "
                                    "support reuse_reserved: run it without reuse_reserved (the rows are the same)")


def plan_tokens(tokenizer: PreTrainedTokenizerBase, words: Iterable[str], config: ExpandConfig,
                lexicon: Iterable[str] = ()) -> TokenPlan:
    """Check the words, plan their entries through the tokenizer's family, and build the new tokenizer.

    New ids follow every existing id; with config.reuse_reserved, unused reserved tokens' ids come first.
    Entries the new tokenizer never produces in ordinary sentences are dropped and reported in skipped.
    With config.portable, the words' merge chains (families/merge_chains.py) add intermediate entries (form
    "piece") after the words, their cherries chosen to collide least with the pre-tokens of ``lexicon``.
    """
    word_list = check_words(words)
    start = time.perf_counter()
    spec = tokenizer_spec(tokenizer)
    first_id = next_free_id(spec)
    if first_id != len(tokenizer):
        raise InvalidInputError(f"tokenizer ids are not contiguous: next free id {first_id}, len(tokenizer) {len(tokenizer)}")
    if config.kind == "added" and config.reuse_reserved:
        raise InvalidInputError("reuse_reserved works with kind='vocab' only; added tokens always get new ids")
    reserved = reusable_reserved_ids(tokenizer) if config.reuse_reserved else []
    if config.kind == "added":
        family_name, plan = "added", plan_added_tokens(tokenizer, word_list)
    else:
        family = detect_family(spec)
        family_name, plan = family.name, plan_words(family, word_list, config.forms)
        if config.portable:
            plan.entries += family.chain_words(plan.entries, lexicon)
    new_ids = _assign_ids(len(plan.entries), reserved, first_id)
    if not plan.entries:
        new_tokenizer = tokenizer if config.inplace else copy.deepcopy(tokenizer)
    elif config.kind == "added":
        flags = dict(lstrip=config.lstrip, rstrip=config.rstrip, single_word=config.single_word,
                     normalized=config.normalized)
        new_tokenizer = with_added_tokens(tokenizer, plan.entries, flags, config.special)
    else:
        new_tokenizer, new_ids = _extended(tokenizer, family, plan, reserved, first_id)
    return TokenPlan(new_tokenizer, family_name, len(tokenizer), len(word_list), plan.entries, new_ids,
                     plan.skipped, time.perf_counter() - start)


def _assign_ids(k: int, reserved: list[int], first_id: int) -> list[int]:
    """Ids for k new entries: reused reserved ids first, then consecutive ids from first_id."""
    reused = reserved[:k]
    return reused + list(range(first_id, first_id + k - len(reused)))


def _extended(tokenizer: PreTrainedTokenizerBase, family: TokenizerFamily, plan: WordPlan, reserved: list[int],
              first_id: int) -> tuple[PreTrainedTokenizerBase, list[int]]:
    """The extended tokenizer and the entries' ids; ``plan`` loses the entries that text never reaches (moved
    to its skipped list), and the tokenizer is rebuilt without them once."""
    ids = _assign_ids(len(plan.entries), reserved, first_id)
    new_tokenizer = tokenizer_from_spec(tokenizer, family.extend(list(zip(plan.entries, ids))))
    missing = unproduced(new_tokenizer, plan.entries, ids)
    if not missing:
        return new_tokenizer, ids
    plan.skipped.extend(missing)
    dropped = {(m.word, m.form) for m in missing}
    plan.entries = [e for e in plan.entries if (e.word, e.form) not in dropped]
    words_kept = {e.word for e in plan.entries}
    lost = list(dict.fromkeys(s.word for s in plan.skipped if s.form and s.word not in words_kept))
    merged = [Skipped(w, "; ".join(s.reason for s in plan.skipped if s.word == w and s.form)) for w in lost]
    plan.skipped = [s for s in plan.skipped if not (s.form and s.word in lost)] + merged  # one line per lost word
    if not plan.entries:
        return copy.deepcopy(tokenizer), []
    ids = _assign_ids(len(plan.entries), reserved, first_id)
    return tokenizer_from_spec(tokenizer, family.extend(list(zip(plan.entries, ids)))), ids
