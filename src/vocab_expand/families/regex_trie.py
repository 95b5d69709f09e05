"""A regular expression matching exactly a set of strings, built as a trie so that tens of thousands of
alternatives stay fast (the engine follows one branch per character instead of trying every word).

Pure string work; the output is Oniguruma-compatible (the regex flavour of the tokenizers library).
"""

from __future__ import annotations

_SPECIAL = set("\\.^$|?*+()[]{}/-#&~ ")


def escape(text: str) -> str:
    """Escape regex metacharacters (non-ASCII letters pass through unchanged)."""
    return "".join("\\" + ch if ch in _SPECIAL else ch for ch in text)


def trie_pattern(words: list[str]) -> str:
    """A non-capturing pattern matching exactly the given non-empty strings (longest alternatives first)."""
    if not words or any(not w for w in words):
        raise ValueError("trie_pattern needs non-empty strings")
    trie: dict = {}
    for word in words:
        node = trie
        for ch in word:
            node = node.setdefault(ch, {})
        node[""] = {}
    return _node_pattern(trie)


def _node_pattern(node: dict) -> str:
    ends = "" in node
    branches = [escape(ch) + _node_pattern(child) for ch, child in sorted(node.items()) if ch != ""]
    if not branches:
        return ""
    body = branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"
    return f"(?:{body})?" if ends else body
