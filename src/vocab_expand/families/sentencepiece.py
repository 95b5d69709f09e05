"""SentencePiece-style BPE with "▁" and byte fallback (Gemma, Llama 2, Mistral): whole-word "▁word" entries.

The normalizer (or a Metaspace pre-tokenizer) turns spaces into "▁", and nothing splits the text into words,
so a vocabulary entry alone is unreachable. Appended merges reach it, but their intermediate entries then
appear inside other words. Instead:

1. A Split pre-tokenizer isolates exactly the new words ("▁Jehoshaphat"), with guards computed per word: no
   "▁" (and no character that some token joins to a "▁" running into this word) before it, and no letter,
   digit or mark (and no character c such that some token is a suffix of this word followed by c) after it.
   With the guards no vocabulary token can span a boundary of the isolated word, so the original tokenization
   already had token boundaries there and tokenized the span on its own: the new token coarsens exactly
   those pieces.
2. BPE `ignore_merges` maps an isolated word, itself a vocabulary entry, to its id.
3. ignore_merges would also change any pre-token that is exactly an entry the merges do not reproduce
   (byte-fallback names such as "<0x41>", and a few others in Gemma 3). A document that is exactly such a
   string is split by anchored Splits that run before the word split (one match attempt per document): each
   splits off the first original piece, and the rest tokenizes as it did inside the whole (no merge crossed
   that boundary), so the result is unchanged. The word split itself is guarded so that it never leaves a
   chunk that is exactly such a string.

Measured on Gemma 3 (262,144 entries): one token joins something to "▁" (">▁</"), and 260 entries need
step 3 (256 byte names and 4 others).

A word's entry is the string it becomes inside text (`form_token`): in the Llama 2 layout, whose normalizer
prepends "▁" to the whole document, " word" alone would normalize to "▁▁word", which text never contains.

Left out: Unigram models (unigram.py reuses the guards); words with whitespace or that start or end with
punctuation (kind="added").
"""

from __future__ import annotations

import unicodedata
from typing import Any

from .base import NewEntry, TokenizerFamily, register_family, walk
from .regex_trie import escape, trie_pattern

MARK = "▁"


def _is_wordish(ch: str) -> bool:
    return unicodedata.category(ch)[0] in "LNM"


@register_family
class SentencePieceBPE(TokenizerFamily):
    name = "sentencepiece_bpe"
    summary = "SentencePiece-style BPE with '▁' and byte fallback, as in Gemma, Llama 2, Mistral"

    @classmethod
    def detects(cls, spec: dict[str, Any]) -> bool:
        model = spec.get("model") or {}
        if model.get("type") != "BPE" or any(n.get("type") == "ByteLevel" for n in walk(spec.get("pre_tokenizer"))):
            return False
        replaces = any(n.get("type") == "Replace" and n.get("content") == MARK for n in walk(spec.get("normalizer")))
        metaspace = any(n.get("type") == "Metaspace" for n in walk(spec.get("pre_tokenizer")))
        return replaces or metaspace

    def normalize(self, text: str) -> str:
        """The text as the model sees it: normalized and with spaces as "▁" (pre-tokenizers run too)."""
        normalized = self.backend.normalizer.normalize_str(text) if self.backend.normalizer else text
        if self.backend.pre_tokenizer is None:
            return normalized
        return "".join(p for p, _ in self.backend.pre_tokenizer.pre_tokenize_str(normalized))

    def form_token(self, word: str, form: str) -> str:
        """The string ``word`` becomes inside ordinary text: after "a " (mid) or after a line break (initial).

        Normalizing the form alone would include what only the document's start gets: with Llama 2's
        Prepend("▁") normalizer " word" alone gives "▁▁word", which text never contains.
        Example (Llama 2 layout): ("Jehoshaphat", "mid") -> "▁Jehoshaphat"; "initial" -> "Jehoshaphat".
        """
        context = "a" if form == "mid" else "a\n"
        head, whole = self.normalize(context), self.normalize(context + (" " if form == "mid" else "") + word)
        if whole.startswith(head):
            return whole[len(head):]
        return self.normalize(" " + word if form == "mid" else word)

    def entry_for(self, word: str, form: str) -> NewEntry | str:
        if any(ch.isspace() for ch in word) or MARK in word:
            return "contains whitespace, so it can never be one vocabulary token; add it with kind='added' instead"
        if not (_is_wordish(word[0]) and _is_wordish(word[-1])):
            return "must start and end with a letter or digit to be a whole-word entry; use kind='added' instead"
        text = " " + word if form == "mid" else word
        token = self.form_token(word, form)
        if form == "initial" and token.startswith(MARK):
            return "this tokenizer prepends '▁' to the first word, so the initial form is the mid form"
        if token in self.vocab:
            return "already a single token"
        pieces = tuple(t.id for t in self.backend.model.tokenize(token))
        return NewEntry(word=word, form=form, token=token, text=text, pieces=pieces)

    def make_reachable(self, spec: dict[str, Any], entries: list[NewEntry]) -> dict[str, Any]:
        spec["model"]["ignore_merges"] = True
        conflicts = self.conflicts()
        words = self.word_pattern(entries, [t for t, _ in conflicts])
        # Breakers first, on whole documents (one anchored match attempt each); the word split after them is
        # guarded so that it never leaves a chunk that is exactly a conflict string.
        splits = [*self.conflict_breakers(conflicts, words), _split(words)]
        existing = spec.get("pre_tokenizer")
        spec["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": ([existing] if existing else []) + splits}
        return spec

    def crossings(self) -> dict[str, dict[str, set[str]]]:
        """Where vocabulary tokens cross word boundaries, indexed for per-word guards.

        "out": x -> {c}: some token is x + c + ..., x ending in a letter/digit/mark and c not one (a token that
        starts inside a word ending in x and runs past its end). "into_mark": z -> {y}: some token contains
        y + "▁" + z with y != "▁". "into_word": z -> {y}: some token contains y + z, y not a letter/digit/mark
        and z starting with one.
        """
        index: dict[str, dict[str, set[str]]] = {"out": {}, "into_mark": {}, "into_word": {}}
        for token in self.vocab:
            for i in range(1, len(token)):
                a, b = token[i - 1], token[i]
                if _is_wordish(a) and not _is_wordish(b):
                    index["out"].setdefault(token[:i], set()).add(b)
                if b == MARK and a != MARK:
                    index["into_mark"].setdefault(token[i + 1 :], set()).add(a)
                if _is_wordish(b) and not _is_wordish(a):
                    index["into_word"].setdefault(token[i:], set()).add(a)
        return index

    @staticmethod
    def guards(token: str, index: dict[str, dict[str, set[str]]]) -> tuple[bool, str, str]:
        """(mid form?, characters that must not precede, characters that must not follow) the isolated token."""
        after: set[str] = set()
        for i in range(len(token)):
            after |= index["out"].get(token[i:], set())
        mid = token.startswith(MARK)
        core = token[1:] if mid else token
        before = {MARK}
        for z, chars in index["into_mark" if mid else "into_word"].items():
            if core.startswith(z) or z.startswith(core):
                before |= chars
        return mid, "".join(sorted(before)), "".join(sorted(after))

    def word_pattern(self, entries: list[NewEntry], conflicts: list[str]) -> str:
        """The regex of all new words with their guards. Words are grouped by form and left guard (in practice
        one or two groups); each group is one trie whose leaves carry the word's own right guard, and a
        mid-form group starts with the literal "▁" so the regex engine can jump between candidate positions.
        After a word there must not be a whole conflict string (up to the end, a "▁" or a letter): isolating
        the word would leave that string as a chunk of its own."""
        index = self.crossings()
        not_after = ""
        if conflicts:
            not_after = "(?!" + trie_pattern(conflicts) + "(?:\\z|" + escape(MARK) + "|[\\p{L}\\p{N}\\p{M}]))"
        groups: dict[tuple[bool, str], dict[str, str]] = {}
        for entry in entries:
            mid, before, after = self.guards(entry.token, index)
            ahead = "(?![\\p{L}\\p{N}\\p{M}" + "".join(escape(c) for c in after) + "])"
            groups.setdefault((mid, before), {})[entry.token] = ahead
        alternatives = []
        for (mid, before), guards in sorted(groups.items()):
            excluded = "".join(escape(c) for c in before)
            if mid:  # "▁" first, then look back past it for a forbidden character
                rests = {t[1:]: g for t, g in guards.items()}
                alternatives.append(escape(MARK) + "(?<![" + excluded + "]" + escape(MARK) + ")"
                                    + trie_pattern(list(rests), rests) + not_after)
            else:  # an initial form must not continue a word either
                alternatives.append("(?<![\\p{L}\\p{N}\\p{M}" + excluded + "])" + trie_pattern(list(guards), guards)
                                    + not_after)
        return "|".join(alternatives)

    def conflicts(self) -> list[tuple[str, list[int]]]:
        """Entries that ignore_merges would map to one token while the merges give several pieces, with the
        end offsets of those pieces. Added tokens are left out: they are matched before pre-tokenization."""
        added = {t["content"] for t in self.spec.get("added_tokens", [])}
        found = []
        for token in self.vocab:
            if token not in added:
                pieces = self.backend.model.tokenize(token)
                if [t.value for t in pieces] != [token]:  # a byte-fallback piece's value is not its text
                    found.append((token, [t.offsets[1] for t in pieces]))
        return found

    @staticmethod
    def conflict_breakers(conflicts: list[tuple[str, list[int]]], words: str) -> list[dict[str, Any]]:
        """Split stages for whole documents, run before the word split.

        First, a document that starts with a conflict string directly followed by a new word (which the word
        split will isolate) is split there: no token crosses that point, as the word's left guard holds.
        Then, one original piece per stage, a pre-token equal to a conflict string is split apart; stages
        repeat while a remainder is itself an entry that would be collapsed.
        """
        if not conflicts:
            return []
        strings = [t for t, _ in conflicts]
        stages = [_split("\\A" + trie_pattern(strings) + "(?=" + words + ")")]
        pending = list(conflicts)
        while pending:
            alternatives = [escape(t[: ends[0]]) + "(?=" + escape(t[ends[0]:]) + "\\z)" for t, ends in pending]
            stages.append(_split("\\A(?:" + "|".join(alternatives) + ")"))
            rests = [(t[ends[0]:], [e - ends[0] for e in ends[1:]]) for t, ends in pending]
            pending = [(r, ends) for r, ends in rests if len(ends) > 1 and any(r == t for t, _ in conflicts)]
        return stages


def _split(pattern: str) -> dict[str, Any]:
    """A tokenizers Split pre-tokenizer that isolates every match of ``pattern``."""
    return {"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": False}
