"""Mining the words worth adding: whole words the tokenizer splits into several pieces, ranked by tokens saved.

One streaming pass over the train split counts (word, form) pairs with a regular expression (a word
preceded by a single space is the "mid" form, any other word the "initial" form). Only distinct words are
then asked of the tokenizer's family, which says whether the word can become one token and how many pieces
it has now, so memory grows with the number of distinct words, never with the corpus's token count.
Ranking: tokens saved on the train split = count x (pieces - 1).

Left out: adding the words (expansion.py).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any, Iterable

from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from .corpus import Corpus, require_corpus
from .families import FORMS_OF, TokenizerFamily
from .tokenization import family_of
from .errors import InvalidInputError

BATCH_DOCUMENTS = 1000
LETTERS = re.compile(r"[^\W\d_]+")
WORD_CHARS = re.compile(r"\w+")


@dataclass(frozen=True)
class Candidate:
    """A word worth adding: its form, vocabulary token, train-split count, current pieces, tokens saved."""

    word: str
    form: str
    token: str
    count: int
    pieces: int
    tokens_saved: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def count_words(documents: Iterable[str], *, allow_digits: bool = False, progress: bool = False) -> Counter:
    """Counter of (word, form) over the documents; form "mid" when the word follows a single space."""
    regex = WORD_CHARS if allow_digits else LETTERS
    counts: Counter = Counter()
    for doc in tqdm(documents, desc="counting words", unit="doc", disable=not progress, mininterval=1.0):
        for match in regex.finditer(doc):
            start = match.start()
            form = "mid" if start > 0 and doc[start - 1] == " " and (start < 2 or not doc[start - 2].isspace()) else "initial"
            counts[(match.group(), form)] += 1
    return counts


def mine(
    tokenizer: PreTrainedTokenizerBase,
    corpus: Corpus,
    top_k: int = 100,
    *,
    min_count: int = 5,
    min_length: int = 3,
    pattern: str | None = None,
    exclude_numbers: bool = True,
    forms: str = "mid",
    progress: bool = True,
) -> list[Candidate]:
    """The top_k whole words of the train split that the tokenizer splits into 2+ pieces, best first."""
    keep = check_options(top_k, min_count, min_length, pattern, forms)
    corpus = require_corpus(corpus)
    if not corpus.train:
        raise InvalidInputError(f"corpus {corpus.name!r} has no training documents to mine")
    family = family_of(tokenizer)
    counts = count_words(corpus.train, allow_digits=not exclude_numbers, progress=progress)
    wanted = set(FORMS_OF[forms])
    found = []
    for (word, form), count in counts.items():
        if form not in wanted or count < min_count or len(word) < min_length:
            continue
        if exclude_numbers and any(ch.isdigit() for ch in word):
            continue
        if keep and not keep.search(word):
            continue
        candidate = _candidate(family, word, form, count)
        if candidate is not None:
            found.append(candidate)
    found.sort(key=lambda c: (-c.tokens_saved, -c.count, c.word, c.form))
    return found[:top_k]


def check_options(top_k: int, min_count: int, min_length: int, pattern: str | None, forms: str) -> re.Pattern | None:
    """The compiled pattern (or None), after checking every option; InvalidInputError says which is wrong.
    Example: check_options(100, 5, 3, "^[A-Z]", "mid") -> re.compile("^[A-Z]")."""
    for name, value in (("top_k", top_k), ("min_count", min_count), ("min_length", min_length)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InvalidInputError(f"{name} must be an integer >= 1, got {value!r}")
    if forms not in FORMS_OF:
        raise InvalidInputError(f"forms must be one of {', '.join(FORMS_OF)}; got {forms!r}")
    try:
        return re.compile(pattern) if pattern else None
    except re.error as err:
        raise InvalidInputError(f"pattern {pattern!r} is not a valid regular expression: {err}") from err


def _candidate(family: TokenizerFamily, word: str, form: str, count: int) -> Candidate | None:
    entry = family.entry_for(word, form)
    if isinstance(entry, str) or len(entry.pieces) < 2:
        return None
    pieces = len(entry.pieces)
    return Candidate(word, form, entry.token, count, pieces, count * (pieces - 1))


def heldout_saving(tokenizer: PreTrainedTokenizerBase, corpus: Corpus, candidates: list[Candidate]) -> dict[str, Any]:
    """Expected saving on the held-out split: tokens saved by the candidates / tokens of the split now."""
    corpus = require_corpus(corpus)
    counts = count_words(corpus.heldout, allow_digits=True)
    saved = sum(counts[(c.word, c.form)] * (c.pieces - 1) for c in candidates)
    total = 0
    for start in range(0, len(corpus.heldout), BATCH_DOCUMENTS):  # batches: never all token ids at once
        batch = corpus.heldout[start : start + BATCH_DOCUMENTS]
        total += sum(len(ids) for ids in tokenizer(batch, add_special_tokens=False)["input_ids"])
    return {"heldout_tokens": total, "tokens_saved": saved, "percent_saved": 100.0 * saved / total if total else 0.0}
