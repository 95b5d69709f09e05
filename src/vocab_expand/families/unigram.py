"""SentencePiece Unigram (T5, ALBERT, XLNet-style "▁" vocabularies): whole-word "▁word" pieces that win by a hair.

A Unigram model segments each pre-token by Viterbi over its pieces' scores (log-probabilities), and a new piece
is a candidate wherever its string occurs, inside longer words too. Its score is therefore the score of the
word's best old segmentation plus a tiny margin (MARGIN per character, so that a longer new word beats a
shorter one plus its rest, "▁offering" + "s" against "▁offerings", which would otherwise tie):
- where the original best path has boundaries at both ends of an occurrence, swapping the word's pieces for
  the new piece gains the margin, so the new best path is the old one with that swap (a coarsening);
- where it has no boundary there, the best path through the new piece scores at most the best old path with
  those boundaries plus the margin, which stays below the original best unless two old paths were within
  the margin of each other (exact ties aside, measured never: see the family property tests);
- text without the word keeps its segmentation (its lattice has no new piece).
As in the SentencePiece BPE family, a guarded Split pre-tokenizer isolates the word where it stands alone
(no vocabulary piece crosses its edges, so the original path had boundaries there); alone in its pre-token,
the new piece beats the word's best segmentation by the margin and is always used.

Unigram ids are positions in a list of [piece, score] pairs, so new pieces are appended after every existing
id (added tokens outside the list are pinned into it first, with a score no path would choose).
Source: Kudo 2018, "Subword Regularization" (the Unigram model); tokenizers' Unigram Viterbi.

Left out: words with characters the vocabulary lacks (their segmentation scores an unknown-piece penalty the
spec does not state), refused; BPE (sentencepiece.py).
"""

from __future__ import annotations

from typing import Any

from .base import NewEntry, register_family, walk
from .sentencepiece import MARK, SentencePieceBPE, _split

# How much a new piece beats its word's best old segmentation, per character: far above float64 rounding of a
# sum of scores (about 1e-13 here), far below the gaps between distinct paths' scores.
MARGIN = 1e-7
# Below every real piece, so that a pinned added token is never on a best path (it is matched before the model
# runs anyway); an unknown character costs min_score - 10 in SentencePiece, far above this.
PINNED_PENALTY = 1000.0


@register_family
class SentencePieceUnigram(SentencePieceBPE):
    name = "sentencepiece_unigram"
    summary = "SentencePiece Unigram with '▁', as in T5, ALBERT, XLNet"

    @classmethod
    def detects(cls, spec: dict[str, Any]) -> bool:
        if (spec.get("model") or {}).get("type") != "Unigram":
            return False
        replaces = any(n.get("type") == "Replace" and n.get("content") == MARK for n in walk(spec.get("normalizer")))
        metaspace = any(n.get("type") == "Metaspace" for n in walk(spec.get("pre_tokenizer")))
        return replaces or metaspace

    def scores(self) -> list[float]:
        return [float(score) for _piece, score in self.spec["model"]["vocab"]]

    def entry_for(self, word: str, form: str) -> NewEntry | str:
        entry = super().entry_for(word, form)
        unk = self.spec["model"].get("unk_id")
        if isinstance(entry, NewEntry) and unk is not None and unk in entry.pieces:
            return "contains characters this Unigram vocabulary lacks (they become the unknown piece); use kind='added'"
        return entry

    def entry_score(self, entry: NewEntry) -> float:
        """The score of the word's best old segmentation plus MARGIN per character: the new piece wins exactly
        where the old best path already had boundaries at both of its ends."""
        scores = self.scores()
        return sum(scores[i] for i in entry.pieces) + MARGIN * len(entry.token)

    def pinned_score(self) -> float:
        return min(self.scores(), default=0.0) - PINNED_PENALTY

    def make_reachable(self, spec: dict[str, Any], entries: list[NewEntry]) -> dict[str, Any]:
        # No merges to ignore and no conflicts: a Unigram piece is only ever used where Viterbi picks it.
        existing = spec.get("pre_tokenizer")
        split = _split(self.word_pattern(entries, []))
        spec["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": ([existing] if existing else []) + [split]}
        return spec
