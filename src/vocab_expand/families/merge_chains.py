"""Portable BPE entries: merge chains that build each new word from its original pieces, so that engines that
tokenize by merges alone (llama.cpp for every pre-tokenizer outside the Llama 3 family) reach the word too.

The default design reaches a new entry through `ignore_merges`, which GGUF cannot carry. Here each word gets
merges appended at the lowest priority, so they only ever join the *final* pieces of the original
tokenization: every new tokenization is a coarsening of the old one. The chain of one word is a caterpillar:
one "cherry" merge of two adjacent original pieces, then one merge per remaining piece that extends the
growing piece left or right. An extension (X, p) needs X, which exists only where the cherry fired, so the
only pre-tokens of other text that change are those whose original pieces hold the cherry pair. The cherry
is therefore the word's adjacent pair that occurs least in a lexicon (the pre-tokens of the corpus, counted
by occurrence; a pair another word already uses costs nothing more). Each node of a chain but the word
itself is an intermediate piece: a new vocabulary entry (form "piece") that gets safe rows like any other.

Worked example: " Rehoboam" = [ĠRe, ho, bo, am]; pairs (ĠRe,ho) 40 times in the lexicon, (ho,bo) 0,
(bo,am) 3 -> cherry (ho,bo) -> merges (ho bo), (hobo am), (ĠRe hoboam); intermediates "hobo", "hoboam".

This weakens the default's guarantee (text without the new words may change where a cherry pair occurs), so it
is an option (ExpandConfig.portable); the changed share is measured in benchmarks/bench_serving.py.
Source: appended lowest-priority merges as in "Teaching Old Tokenizers New Words" (arXiv 2512.03989).

Left out: Unigram models (no merges); choosing words (mining.py).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable, Sequence

if TYPE_CHECKING:  # base.py imports this module: the types only
    from .base import NewEntry, TokenizerFamily

PIECE_FORM = "piece"


@dataclass
class Chains:
    """merges: (left, right) strings in rank order; pieces: intermediate strings with their original piece ids;
    cherries: word token -> its cherry pair. A word without a chain (a byte-fallback piece) is not reached."""

    merges: list[tuple[str, str]] = field(default_factory=list)
    pieces: dict[str, tuple[int, ...]] = field(default_factory=dict)
    cherries: dict[str, tuple[str, str]] = field(default_factory=dict)


def pre_tokens(family: TokenizerFamily, text: str) -> list[str]:
    """The strings the BPE model sees for ``text``: the pre-tokenizer's output; for a "▁" layout without one,
    the normalized text cut before each "▁" run's last mark. Example (SmolLM2): "And he" -> ["And", "Ġhe"]."""
    backend = family.backend
    normalized = backend.normalizer.normalize_str(text) if backend.normalizer else text
    if backend.pre_tokenizer is not None:
        parts = [p for p, _ in backend.pre_tokenizer.pre_tokenize_str(normalized)]
    else:
        parts = [normalized]
    return [piece for part in parts for piece in re.findall(r"▁*[^▁]+|▁+", part)]


def lexicon_pairs(family: TokenizerFamily, documents: Iterable[str], skip: set[str]) -> Counter:
    """(left, right) -> occurrences of that adjacent pair of original pieces in the pre-tokens of ``documents``
    (pre-tokens in ``skip``, the new words, left out)."""
    words: Counter = Counter()
    for document in documents:
        words.update(pre_tokens(family, document))
    pairs: Counter = Counter()
    for word, count in words.items():
        if word in skip:
            continue
        pieces = [t.value for t in family.backend.model.tokenize(word)]
        for pair in zip(pieces, pieces[1:]):
            pairs[pair] += count
    return pairs


def build_chains(family: TokenizerFamily, entries: Sequence[NewEntry], pairs: Counter) -> Chains:
    """Caterpillar chains for ``entries`` (module docstring), cheapest cherry first, shared where words agree."""
    chains = Chains()
    used: set[tuple[str, str]] = set()
    made: set[tuple[str, str]] = set()
    for entry in entries:
        tokens = family.backend.model.tokenize(entry.token)
        pieces = [t.value for t in tokens]
        if len(pieces) < 2 or "".join(pieces) != entry.token:  # a byte-fallback piece ("<0x5A>") cannot merge
            continue
        # the cheapest pair in the lexicon (one another word already uses costs nothing); among equals the last
        # (measured on 100 KJV words: as good as the longest or the rarest-piece pair, with fewer intermediates)
        i = min(range(len(pieces) - 1), key=lambda j: (0 if (pieces[j], pieces[j + 1]) in used
                                                       else pairs[(pieces[j], pieces[j + 1])], -j))
        used.add((pieces[i], pieces[i + 1]))
        chains.cherries[entry.token] = (pieces[i], pieces[i + 1])
        for left, right, start, end in _caterpillar(pieces, i):
            if (left, right) not in made:
                made.add((left, right))
                chains.merges.append((left, right))
            joined = left + right
            if joined != entry.token:
                chains.pieces.setdefault(joined, tuple(t.id for t in tokens[start:end]))
    return chains


def _caterpillar(pieces: list[str], i: int) -> list[tuple[str, str, int, int]]:
    """The merges that grow pieces[i:i+2] to the whole word, right first, then left: (left, right, start, end)
    with pieces[start:end] the span the merge makes. Example: (["a","b","c","d"], 1) -> (b,c) (bc,d) (a,bcd)."""
    start, end = i, i + 2
    merges = [(pieces[i], pieces[i + 1], start, end)]
    while end < len(pieces):
        merges.append(("".join(pieces[start:end]), pieces[end], start, end + 1))
        end += 1
    while start > 0:
        merges.append((pieces[start - 1], "".join(pieces[start:end]), start - 1, end))
        start -= 1
    return merges


def new_pieces(family: TokenizerFamily, chains: Chains, taken: set[str]) -> list[tuple[str, str, tuple[int, ...]]]:
    """The intermediates that are not in the vocabulary yet: (vocabulary string, text it decodes to, original
    piece ids). Example (SmolLM2): ("hosh", "hosh", (71, 3468))."""
    found = []
    for piece, ids in chains.pieces.items():
        if piece not in taken and piece not in family.vocab:
            text = family.backend.decoder.decode([piece]) if family.backend.decoder else piece
            found.append((piece, text, ids))
    return found


def append_merges(spec: dict[str, Any], merges: Sequence[tuple[str, str]]) -> None:
    """Append ``merges`` after every existing merge (lowest priority), in the spec's own format (in place)."""
    existing = spec["model"]["merges"]
    as_pairs = not existing or isinstance(existing[0], list)
    existing.extend([list(m) for m in merges] if as_pairs else [f"{a} {b}" for a, b in merges])


def unreached_by_merges(spec: dict[str, Any], tokens: Sequence[str]) -> list[str]:
    """The vocabulary strings in ``tokens`` that the BPE merges alone (ignore_merges off, as in llama.cpp outside
    the Llama 3 family) do not build from their own characters. Example: a default expansion's "ĠJehoshaphat"
    -> ["ĠJehoshaphat"]; the same word expanded with portable=True -> []."""
    import copy
    import json

    from tokenizers import Tokenizer

    if (spec.get("model") or {}).get("type") != "BPE":
        return list(tokens)
    plain = copy.deepcopy(spec)
    plain["model"]["ignore_merges"] = False
    model = Tokenizer.from_str(json.dumps(plain)).model
    return [t for t in tokens if [p.value for p in model.tokenize(t)] != [t]]
