"""Extending a transformers tokenizer with new words: validation, planning, and building the result.

Turns user words into new vocabulary entries through the tokenizer's family (families/), assigns ids,
and builds a new transformers tokenizer whose saved form reloads identically with plain
`AutoTokenizer.from_pretrained`. Model-specific tokenizer classes in transformers v5 rebuild their
backend from vocab and merges and would drop our entries' reachability (`ignore_merges`), so the result is
saved as the generic `PreTrainedTokenizerFast`, which loads tokenizer.json as it is.

Left out: embeddings (resize.py).
"""

from __future__ import annotations

import copy
import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, NamedTuple, Sequence

from tokenizers import AddedToken
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from .errors import InvalidInputError, InvalidTypeError
from .families import FORMS_OF, NewEntry, TokenizerFamily, detect_family

GENERIC_TOKENIZER_CLASS = "PreTrainedTokenizerFast"


class Skipped(NamedTuple):
    """A word that was not added, and why."""

    word: str
    reason: str


@dataclass
class WordPlan:
    """The entries to add (in id order) and the words skipped with their reasons."""

    entries: list[NewEntry] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)


def tokenizer_spec(tokenizer: PreTrainedTokenizerBase) -> dict[str, Any]:
    """The tokenizers-library JSON of a fast tokenizer; a clear error for slow ones."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise InvalidTypeError(
            f"{type(tokenizer).__name__} is a slow (pure Python) tokenizer; vocab-expand needs a fast one. "
            "Load it with AutoTokenizer.from_pretrained(..., use_fast=True) or convert it first."
        )
    return json.loads(backend.to_str())


def check_words(words: Iterable[object]) -> list[str]:
    """The words as a list of str. TypeError for a non-str item, ValueError for no words at all."""
    if isinstance(words, (str, bytes)):
        raise InvalidTypeError("words must be a list of strings, not one string: pass [word]")
    listed = list(words)
    for item in listed:
        if not isinstance(item, str):
            raise InvalidTypeError(f"every word must be a str; got {item!r} ({type(item).__name__})")
    if not listed:
        raise InvalidInputError("no words given: pass at least one word, e.g. expand(model, tokenizer, ['Jehoshaphat'])")
    return listed


def plan_words(family: TokenizerFamily, words: list[str], forms: str) -> WordPlan:
    """Entries for every (word, form) that can become one new token; reasons for the rest."""
    plan = WordPlan()
    seen_words: set[str] = set()
    seen_tokens: set[str] = set()
    for word in words:
        if not word.strip():
            plan.skipped.append(Skipped(word, "empty or whitespace-only word"))
            continue
        if word in seen_words:
            plan.skipped.append(Skipped(word, "duplicate of an earlier word"))
            continue
        seen_words.add(word)
        reasons = []
        added = 0
        for form in FORMS_OF[forms]:
            entry = family.entry_for(word, form)
            if isinstance(entry, str):
                reasons.append(f"{form} form: {entry}")
            elif entry.token in seen_tokens:
                reasons.append(f"{form} form: same token as an earlier word")
            else:
                seen_tokens.add(entry.token)
                plan.entries.append(entry)
                added += 1
        if not added:
            plan.skipped.append(Skipped(word, "; ".join(reasons)))
    return plan


def plan_added_tokens(tokenizer: PreTrainedTokenizerBase, words: list[str]) -> WordPlan:
    """Entries for added-token mode: each string as given; skipped when empty, repeated or already one token."""
    plan = WordPlan()
    vocab = tokenizer.get_vocab()
    seen: set[str] = set()
    for word in words:
        if not word.strip():
            plan.skipped.append(Skipped(word, "empty or whitespace-only word"))
        elif word in seen:
            plan.skipped.append(Skipped(word, "duplicate of an earlier word"))
        elif word in vocab:
            plan.skipped.append(Skipped(word, "already a single token"))
        else:
            seen.add(word)
            pieces = tuple(tokenizer(word, add_special_tokens=False)["input_ids"])
            if len(pieces) == 1 and tokenizer.decode(pieces) == word:
                plan.skipped.append(Skipped(word, "already a single token"))
                continue
            plan.entries.append(NewEntry(word=word, form="added", token=word, text=word, pieces=pieces))
    return plan


def with_added_tokens(tokenizer: PreTrainedTokenizerBase, entries: list[NewEntry], flags: dict[str, bool],
                      special: bool) -> PreTrainedTokenizerBase:
    """A copy of the tokenizer with the entries as added tokens carrying ``flags`` (lstrip, rstrip, ...)."""
    new = copy.deepcopy(tokenizer)
    tokens = [AddedToken(e.token, special=special, **flags) for e in entries]
    added = new.add_tokens(tokens, special_tokens=special)
    if added != len(entries):
        raise InvalidInputError(f"the tokenizer added {added} of {len(entries)} tokens; some already exist")
    return new


def next_free_id(spec: dict[str, Any]) -> int:
    """The first id above every vocabulary entry and added token (new ids are consecutive from here)."""
    ids = list(spec["model"]["vocab"].values()) + [t["id"] for t in spec.get("added_tokens", [])]
    return max(ids) + 1 if ids else 0


def tokenizer_from_spec(tokenizer: PreTrainedTokenizerBase, spec: dict[str, Any]) -> PreTrainedTokenizerBase:
    """A new tokenizer with the original's settings (special tokens, chat template) and ``spec`` as backend.

    Built through save and load, so the object returned is exactly what a user gets after reloading.
    """
    with tempfile.TemporaryDirectory(prefix="vocab-expand-tok-") as tmp:
        tokenizer.save_pretrained(tmp)
        Path(tmp, "tokenizer.json").write_text(json.dumps(spec, ensure_ascii=False), encoding="utf-8")
        config_path = Path(tmp, "tokenizer_config.json")
        config = json.loads(config_path.read_text(encoding="utf-8"))
        config["tokenizer_class"] = GENERIC_TOKENIZER_CLASS
        config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False), encoding="utf-8")
        return AutoTokenizer.from_pretrained(tmp)


def family_of(tokenizer: PreTrainedTokenizerBase) -> TokenizerFamily:
    return detect_family(tokenizer_spec(tokenizer))


def start_token_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The token every document is scored after: BOS, else EOS (a document boundary)."""
    for value in (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id):
        if value is not None:
            return int(value)
    raise InvalidInputError("the tokenizer has no BOS, EOS or pad token to start documents with")


def documents_up_to(documents: Sequence[str], tokenizer: PreTrainedTokenizerBase, max_tokens: int) -> list[str]:
    """The first documents until about ``max_tokens`` tokens are reached (the one that crosses is kept).

    E.g. three documents of 10 tokens each and max_tokens 15 -> the first two."""
    docs, total = [], 0
    for doc in documents:
        docs.append(doc)
        total += len(tokenizer(doc, add_special_tokens=False)["input_ids"])
        if total >= max_tokens:
            break
    return docs
