"""Byte-level BPE (GPT-2, SmolLM2, Llama 3, Qwen): whole-word pre-tokens become vocabulary entries.

The pre-tokenizer already cuts text into words with their leading space ("ĠJehoshaphat"). Adding that
string to the vocabulary and setting the BPE model's `ignore_merges` makes a pre-token that is itself in
the vocabulary skip the merges, so the word becomes one token and spacing is untouched. Pre-tokenization is
unchanged, so every other pre-token still goes through the same merges: text without the new words
tokenizes exactly as before, and a new token always replaces exactly the run of old pieces of its pre-token.

The one thing `ignore_merges` could change is an *existing* vocabulary entry that the merges do not
reproduce and that can occur as a pre-token; `reachable_merge_conflicts` finds those, and extension refuses
to proceed if there are any (measured: none in SmolLM2; its 17 special tokens cannot be pre-tokens).
Llama 3 and Qwen keep their specials outside the vocabulary; base.TokenizerFamily.extend pins them first.
Source: tokenizers' BPE `ignore_merges` (used by Llama 3's tokenizer.json).

Left out: words that the pre-tokenizer splits (they need kind="added"); SentencePiece layouts (sentencepiece.py).
"""

from __future__ import annotations

from typing import Any

from tokenizers import decoders

from .base import NewEntry, TokenizerFamily, UnsupportedTokenizerError, register_family, walk


BYTES_TO_TEXT = decoders.ByteLevel()


@register_family
class ByteLevelBPE(TokenizerFamily):
    name = "byte_level_bpe"
    summary = "byte-level BPE as in GPT-2, SmolLM2, Llama 3, Qwen"

    @classmethod
    def detects(cls, spec: dict[str, Any]) -> bool:
        model = spec.get("model") or {}
        return model.get("type") == "BPE" and any(
            node.get("type") == "ByteLevel" for node in walk(spec.get("pre_tokenizer"))
        )

    def entry_for(self, word: str, form: str) -> NewEntry | str:
        text = " " + word if form == "mid" else word
        normalized = self.backend.normalizer.normalize_str(text) if self.backend.normalizer else text
        pre = self.backend.pre_tokenizer.pre_tokenize_str(normalized)
        if len(pre) != 1:
            parts = [p for p, _ in pre]
            return (
                f"splits into {len(parts)} pre-tokens {parts}, so it can never be one vocabulary token; "
                "add it with kind='added' instead"
            )
        token = pre[0][0]
        if token in self.vocab:
            return "already a single token"
        pieces = tuple(t.id for t in self.backend.model.tokenize(token))
        return NewEntry(word=word, form=form, token=token, text=text, pieces=pieces)

    def make_reachable(self, spec: dict[str, Any], entries: list[NewEntry]) -> dict[str, Any]:
        if not self.spec["model"].get("ignore_merges", False):
            conflicts = self.reachable_merge_conflicts()
            if conflicts:
                raise UnsupportedTokenizerError(
                    f"this byte-level BPE has {len(conflicts)} vocabulary entries that its merges do not "
                    f"reproduce but text can contain (e.g. {conflicts[:5]}); turning on ignore_merges would "
                    "change how they tokenize. Add the words with kind='added' instead."
                )
        spec["model"]["ignore_merges"] = True
        return spec

    def reachable_merge_conflicts(self) -> list[str]:
        """Vocabulary entries that merges do not produce from their own bytes and that can be a pre-token."""
        conflicts = []
        for token in self.vocab:
            if [t.value for t in self.backend.model.tokenize(token)] == [token]:
                continue
            text = BYTES_TO_TEXT.decode([token])
            pre = self.backend.pre_tokenizer.pre_tokenize_str(text)
            if [p for p, _ in pre] == [token]:
                conflicts.append(token)
        return conflicts
