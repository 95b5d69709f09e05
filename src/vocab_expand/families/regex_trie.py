"""A regular expression matching exactly a set of strings, built as a trie so that tens of thousands of
alternatives stay fast (the engine follows one branch per character instead of trying every word).

Pure string work; the output is Oniguruma-compatible (the regex flavour of the tokenizers library).
"""

from __future__ import annotations

_SPECIAL = set("\\.^$|?*+()[]{}/-#&~ ")


def escape(text: str) -> str:
    """Escape regex metacharacters (non-ASCII letters pass through unchanged)."""
    return "".join("\\" + ch if ch in _SPECIAL else ch for ch in text)


def trie_pattern(words: list[str], suffixes: dict[str, str] | None = None) -> str:
    """A non-capturing pattern matching exactly the given non-empty strings.

    ``suffixes`` may give, per word, a zero-width pattern (a lookahead) that must hold where that word ends;
    it is placed at the word's leaf, so words with different guards still share one trie.
    """
    if not words or any(not w for w in words):
        raise ValueError("trie_pattern needs non-empty strings")
    suffixes = suffixes or {}
    trie: dict = {}
    for word in words:
        node = trie
        for ch in word:
            node = node.setdefault(ch, {})
        node[""] = suffixes.get(word, "")
    return _node_pattern(trie)


def _node_pattern(node: dict) -> str:
    end = node.get("")
    branches = [escape(ch) + _node_pattern(child) for ch, child in sorted(node.items()) if ch != ""]
    if end is not None:
        branches.append(end)  # the word ends here; an empty branch when it has no guard
    if len(branches) == 1:
        return branches[0]
    return "(?:" + "|".join(branches) + ")"
