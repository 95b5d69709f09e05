"""What every tokenizer family implements, and the one registry of families.

A family knows how a word appears in its tokenizer's vocabulary (its whole-word pre-token forms) and how
to make a new vocabulary entry reachable without changing how any other text tokenizes. It works on the
tokenizers-library JSON ("spec") and a `tokenizers.Tokenizer` built from it; it never touches models.

Every family extends a spec the same way (`TokenizerFamily.extend`): added tokens that live outside the
model's vocabulary (Llama 3's and Qwen's specials) are first pinned into it at their own ids, because the
tokenizers library renumbers such tokens from the vocabulary's size when it loads a tokenizer.json, and new
entries would otherwise shift every one of them. Ids given to new entries that belong to added tokens (reused
reserved tokens) replace those tokens.

Left out: embeddings (rows/) and building the transformers tokenizer object (tokenization.py).
"""

from __future__ import annotations

import copy
import json
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar, Iterable

from tokenizers import Tokenizer

from ..errors import UnsupportedTokenizerError

# The word forms each choice of `forms` (config.FORM_CHOICES) adds: " word" in running text (mid), "word" at
# the start of a text (initial). tokenization.py and mining.py read them from here.
FORMS_OF: dict[str, tuple[str, ...]] = {"mid": ("mid",), "initial": ("initial",), "both": ("mid", "initial")}


@dataclass(frozen=True)
class NewEntry:
    """One new vocabulary entry.

    word: the word as the user gave it ("Jehoshaphat"); form: "mid" or "initial";
    token: the vocabulary string ("ĠJehoshaphat"); text: what it decodes to (" Jehoshaphat");
    pieces: the old ids that text tokenized to before expansion.
    """

    word: str
    form: str
    token: str
    text: str
    pieces: tuple[int, ...]


class TokenizerFamily(ABC):
    """Base class: subclasses set name and summary and implement detects(), entry_for() and make_reachable();
    extend() (here) pins added tokens at their ids, writes the entries and then calls make_reachable()."""

    name: ClassVar[str]
    summary: ClassVar[str]

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.backend = Tokenizer.from_str(json.dumps(spec))
        self.vocab: dict[str, int] = vocab_ids(spec)
        self.chains: Any = None  # merge_chains.Chains once chain_words() ran (portable mode)

    @classmethod
    @abstractmethod
    def detects(cls, spec: dict[str, Any]) -> bool:
        """True if this family handles the tokenizer described by ``spec``."""

    @abstractmethod
    def entry_for(self, word: str, form: str) -> NewEntry | str:
        """The entry that makes ``word`` (in ``form``) one token, or the reason it cannot be added."""

    def extend(self, entries: list[tuple[NewEntry, int]]) -> dict[str, Any]:
        """A new spec with each entry added under its id; the original spec is not modified.

        Ids below the vocabulary's end must belong to added tokens (reserved ones being reused): those tokens
        are removed and the entry takes their id. Every other added token keeps its id.
        """
        spec = copy.deepcopy(self.spec)
        taken = {token_id for _, token_id in entries}
        spec["added_tokens"] = [t for t in spec.get("added_tokens", []) if t["id"] not in taken]
        vocab = spec["model"]["vocab"]
        if isinstance(vocab, dict):  # a reused token that was also a vocabulary entry gives its id up (one pass)
            spec["model"]["vocab"] = {t: i for t, i in vocab.items() if i not in taken}
        pin_added_tokens(spec, self.pinned_score())
        for entry, token_id in entries:
            set_vocab_entry(spec, entry.token, token_id, self.entry_score(entry))
        if self.chains is not None:  # portable: merges alone reach the words; ignore_merges stays as it was
            from .merge_chains import append_merges

            append_merges(spec, self.chains.merges)
            return spec
        return self.make_reachable(spec, [entry for entry, _ in entries])

    def chain_words(self, entries: list[NewEntry], lexicon: Iterable[str]) -> list[NewEntry]:
        """Portable mode: plan merge chains for ``entries`` (kept for extend()) and return their intermediate
        pieces as new entries (form "piece"). BPE families only; others raise UnsupportedTokenizerError."""
        from .merge_chains import PIECE_FORM, build_chains, lexicon_pairs, new_pieces

        if self.spec["model"].get("type") != "BPE":
            raise UnsupportedTokenizerError(f"portable entries are merge chains, which need a BPE tokenizer; this one "
                                            f"is {self.spec['model'].get('type')}: leave out portable (--portable)")
        words = {entry.token for entry in entries}
        self.chains = build_chains(self, entries, lexicon_pairs(self, lexicon, words))
        return [NewEntry(word=text, form=PIECE_FORM, token=piece, text=text, pieces=ids)
                for piece, text, ids in new_pieces(self, self.chains, words)]

    @abstractmethod
    def make_reachable(self, spec: dict[str, Any], entries: list[NewEntry]) -> dict[str, Any]:
        """``spec`` (already holding the entries) changed so that text reaches them; may modify it in place."""

    def entry_score(self, entry: NewEntry) -> float | None:
        """The score a new entry gets in a scored (Unigram) vocabulary; None for BPE."""
        return None

    def pinned_score(self) -> float | None:
        """The score of an added token pinned into a scored (Unigram) vocabulary; None for BPE."""
        return None


_FAMILIES: list[type[TokenizerFamily]] = []


def register_family(cls: type[TokenizerFamily]) -> type[TokenizerFamily]:
    """Class decorator: add a family. Rejects duplicate names and non-families.

    A family for a WordPiece-style vocabulary (##-continued pieces), e.g. in families/wordpiece.py, then its name in
    the import line of families/__init__.py and in FAMILY_ORDER::

        @register_family
        class WordPiece(TokenizerFamily):
            name, summary = "wordpiece", "BERT-style WordPiece: whole words as vocabulary entries"

            @classmethod
            def detects(cls, spec):
                return spec["model"]["type"] == "WordPiece"

            def entry_for(self, word, form):
                if word in self.vocab:
                    return "already one token"
                pieces = tuple(self.backend.encode(word, add_special_tokens=False).ids)
                return NewEntry(word, form, word, word, pieces)

            def make_reachable(self, spec, entries):
                return spec  # WordPiece matches the longest vocabulary entry first: nothing to add

    `expand` then detects such a tokenizer and writes the entries through `extend`, which pins added tokens first."""
    if not (isinstance(cls, type) and issubclass(cls, TokenizerFamily)):
        raise TypeError(f"{cls!r} is not a TokenizerFamily subclass")
    if any(f.name == cls.name for f in _FAMILIES):
        raise ValueError(f"a tokenizer family named {cls.name!r} is already registered")
    _FAMILIES.append(cls)
    return cls


def family_names() -> list[str]:
    return [f.name for f in _FAMILIES]


def detect_family(spec: dict[str, Any]) -> TokenizerFamily:
    """The family instance for a tokenizer spec, or UnsupportedTokenizerError naming the supported ones."""
    for cls in _FAMILIES:
        if cls.detects(spec):
            return cls(spec)
    model = spec.get("model", {}).get("type", "unknown")
    pre = (spec.get("pre_tokenizer") or {}).get("type", "none")
    supported = "; ".join(f"{f.name} ({f.summary})" for f in _FAMILIES)
    raise UnsupportedTokenizerError(
        f"this tokenizer (model {model}, pre-tokenizer {pre}) is not a supported family for real "
        f"vocabulary entries. Supported: {supported}. For control strings or other tokenizers, add the "
        "words as added tokens instead: expand(..., kind='added') or --kind added."
    )


def walk(node: Any):
    """Every dict inside a spec component (Sequence pre-tokenizers nest their parts)."""
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from walk(value)


def vocab_ids(spec: dict[str, Any]) -> dict[str, int]:
    """token -> id of the model's vocabulary: a dict for BPE/WordPiece, [piece, score] pairs for Unigram."""
    vocab = spec["model"]["vocab"]
    if isinstance(vocab, list):
        return {piece: i for i, (piece, _score) in enumerate(vocab)}
    return vocab


def set_vocab_entry(spec: dict[str, Any], token: str, token_id: int, score: float | None) -> None:
    """Put ``token`` at ``token_id`` in the model's vocabulary (in place). A dict vocabulary must not hold
    ``token_id`` already (the caller frees reused ids first, in one pass). A Unigram vocabulary is a list whose
    index is the id, so an id may only replace a piece or append one.
    """
    vocab = spec["model"]["vocab"]
    if isinstance(vocab, list):
        if token_id > len(vocab):
            raise ValueError(f"Unigram ids must stay contiguous: cannot put {token!r} at {token_id} "
                             f"after {len(vocab)} pieces")
        pair = [token, 0.0 if score is None else score]
        vocab[token_id:token_id + 1] = [pair]
        return
    vocab[token] = token_id


def pin_added_tokens(spec: dict[str, Any], score: float | None) -> None:
    """Put every added token that is not in the model's vocabulary into it, at its own id (in place).

    The tokenizers library numbers added tokens missing from the vocabulary from the vocabulary's size on load
    and ignores the ids in the file: pinned, they keep their ids however many entries follow. They are still
    matched before the model runs, so the model never sees them in ordinary encoding.
    Example: vocab {"a": 0, "b": 1}, added [{"content": "<s>", "id": 2}] -> vocab {"a": 0, "b": 1, "<s>": 2}.
    """
    present = vocab_ids(spec)
    for token in sorted(spec.get("added_tokens", []), key=lambda t: t["id"]):
        if present.get(token["content"]) != token["id"]:
            set_vocab_entry(spec, token["content"], token["id"], score)
