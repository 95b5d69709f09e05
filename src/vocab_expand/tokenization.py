"""Extending a transformers tokenizer with new words: validation, planning, and building the result.

Turns user words into new vocabulary entries through the tokenizer's family (families/), assigns ids,
and builds a new transformers tokenizer whose saved form reloads identically with plain
`AutoTokenizer.from_pretrained`. Model-specific tokenizer classes in transformers v5 rebuild their
backend from vocab and merges and would drop our entries' reachability (`ignore_merges`), so the result is
saved as the generic `PreTrainedTokenizerFast`, which loads tokenizer.json as it is. In transformers 5 the
Llama, Qwen 2, Gemma and GPT-2 classes add no public method to it; their class defaults (padding side) are
written into the saved config. T5's `get_sentinel_tokens` helpers are the one loss (tested).

Also here: the check that every new entry is produced by ordinary sentences (PROBES), and finding the unused
reserved tokens that reuse_reserved turns into new words.

Left out: embeddings (rows/); assigning ids (planning.py).
"""

from __future__ import annotations

import copy
import json
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, NamedTuple, Sequence

from tokenizers import AddedToken
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from .errors import InvalidInputError, InvalidTypeError
from .families import FORMS_OF, NewEntry, TokenizerFamily, detect_family
from .families.base import vocab_ids

GENERIC_TOKENIZER_CLASS = "PreTrainedTokenizerFast"


class Skipped(NamedTuple):
    """A word, or one form of it ("initial"), that was not added, and why. form "" means the whole word."""

    word: str
    reason: str
    form: str = ""


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
    """Entries for every (word, form) that can become one new token; reasons for the rest.

    A word none of whose forms can be added is skipped as a whole (form ""). A word added in some forms but
    refused in another (a sentence-initial form that splits into several pre-tokens) is reported for that form.
    A form that is already one token, or that is the same token as the word's other form, is not a loss.
    """
    plan = WordPlan()
    seen_words: set[str] = set()
    seen_tokens: dict[str, str] = {}
    for word in words:
        if not word.strip():
            plan.skipped.append(Skipped(word, "empty or whitespace-only word"))
            continue
        if word in seen_words:
            plan.skipped.append(Skipped(word, "duplicate of an earlier word"))
            continue
        seen_words.add(word)
        refused: list[tuple[str, str]] = []
        added = 0
        for form in FORMS_OF[forms]:
            entry = family.entry_for(word, form)
            if isinstance(entry, str):
                refused.append((form, entry))
            elif entry.token in seen_tokens:
                same = seen_tokens[entry.token] == word
                refused.append((form, "same token as its other form" if same else "same token as an earlier word"))
            else:
                seen_tokens[entry.token] = word
                plan.entries.append(entry)
                added += 1
        if not added:
            plan.skipped.append(Skipped(word, "; ".join(f"{form} form: {why}" for form, why in refused)))
        else:
            plan.skipped.extend(Skipped(word, f"{form} form: {why}", form) for form, why in refused if not _harmless(why))
    return plan


def _harmless(reason: str) -> bool:
    """A refused form that still ends up one token in text (so nothing is lost for it)."""
    return reason in ("already a single token", "same token as its other form") or "initial form is the mid" in reason


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
    ids = list(vocab_ids(spec).values()) + [t["id"] for t in spec.get("added_tokens", [])]
    return max(ids) + 1 if ids else 0


# Sentences each form of a word must be tokenized in, as the new token, for the entry to count as added: the
# mid form inside a sentence, the initial form at a document's start and after a line break.
# Punctuation after the word as well: a tokenizer with tokens crossing "▁" may refuse the word before a space.
PROBES = {"mid": ("They saw {} there.", "and {}, then", "to {}."),
          "initial": ("{} is here.", "Look:\n{} is here.", "{}, then", "Look:\n{}.")}
# Llama 3's "<|reserved_special_token_7|>" and similar names of placeholder tokens.
RESERVED = re.compile(r"<\|?[a-z_]*reserved[a-z_]*?_?\d+\|?>", re.IGNORECASE)


def unproduced(tokenizer: PreTrainedTokenizerBase, entries: list[NewEntry], ids: list[int]) -> list[Skipped]:
    """The entries whose id the extended tokenizer never produces in their form's PROBES, with the reason.

    A family's entry can be unreachable for reasons it cannot see alone (guards that refuse a word next to a
    vocabulary token crossing "▁", a layout it reads wrongly); such an entry would waste a row and be used
    nowhere. Example: "▁▁Jehoshaphat" in a Llama 2 layout is never produced by "They saw Jehoshaphat there.".
    All sentences go to the tokenizer as one batch (the Rust backend), so 10,000 words cost about a second.
    """
    kept = [(e, i) for e, i in zip(entries, ids) if e.form != "piece"]  # merge-chain pieces live inside words
    entries, ids = [e for e, _ in kept], [i for _, i in kept]
    sentences = [[p.format(e.word) for p in PROBES.get(e.form, PROBES["mid"])] for e in entries]
    encoded = iter(tokenizer([t for group in sentences for t in group], add_special_tokens=False)["input_ids"])
    missing = []
    for entry, token_id, group in zip(entries, ids, sentences):
        found = [token_id in next(encoded) for _ in group]
        if not any(found):
            missing.append(Skipped(entry.word, f"{entry.form} form: the extended tokenizer never produces "
                                   f"{entry.token!r} in sentences such as {group[0]!r}", entry.form))
    return missing


def reusable_reserved_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Ids of reserved placeholder tokens ("<|reserved_special_token_N|>") that nothing refers to, ascending.

    A reserved token named in the chat template or the special-token map is in use and kept.
    """
    templates = tokenizer.chat_template or ""
    used_text = json.dumps(templates) if not isinstance(templates, str) else templates
    named = {str(v) for v in tokenizer.special_tokens_map.values() if isinstance(v, str)}
    found = []
    for token_id, token in tokenizer.added_tokens_decoder.items():
        if RESERVED.fullmatch(token.content) and token.content not in named and token.content not in used_text:
            found.append(token_id)
    return sorted(found)


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
        # Class-level defaults of the original class are not saved (Llama and Gemma pad on the left, the generic
        # class on the right): written out, they survive the change of class.
        config["padding_side"], config["truncation_side"] = tokenizer.padding_side, tokenizer.truncation_side
        _forget_replaced_tokens(config, spec)
        config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False), encoding="utf-8")
        return AutoTokenizer.from_pretrained(tmp)


def _forget_replaced_tokens(config: dict[str, Any], spec: dict[str, Any]) -> None:
    """Drop added tokens that ``spec`` no longer has (reused reserved ones) from a tokenizer_config, in place:
    transformers would otherwise add them back on load, under new ids."""
    kept = {t["content"] for t in spec.get("added_tokens", [])} | set(vocab_ids(spec))
    decoder = config.get("added_tokens_decoder")
    if isinstance(decoder, dict):
        config["added_tokens_decoder"] = {i: t for i, t in decoder.items() if t.get("content") in kept}
    for key in ("extra_special_tokens", "additional_special_tokens"):
        if isinstance(config.get(key), list):
            config[key] = [t for t in config[key] if (t.get("content") if isinstance(t, dict) else t) in kept]


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
