"""Checks shared by the tokenizer tests: round trip, coarsening, unchanged text without new words."""

from __future__ import annotations


def assert_coarsening(old_tok, new_tok, text: str, new_ids: set[int]) -> None:
    """Every new id stands for exactly a run of old ids that decodes to the same string; the rest is equal.

    Round trip: exact wherever the original tokenizer round-trips (the GGUF-converted SmolLM2 tokenizer itself
    loses some unassigned code points, e.g. U+40000); elsewhere the same decoded text as the original's.
    """
    old_ids = old_tok(text, add_special_tokens=False)["input_ids"]
    ids = new_tok(text, add_special_tokens=False)["input_ids"]
    old_text = old_tok.decode(old_ids)
    assert new_tok.decode(ids) == (text if old_text == text else old_text)
    i = 0
    for token in ids:
        if token in new_ids:
            piece = new_tok.decode([token])
            j = i
            while j < len(old_ids) and old_tok.decode(old_ids[i : j + 1]) != piece:
                j += 1
            assert j < len(old_ids), f"new token {piece!r} is not a run of old tokens in {text!r}"
            i = j + 1
        else:
            assert i < len(old_ids) and old_ids[i] == token, f"{text!r}: {ids} vs {old_ids}"
            i += 1
    assert i == len(old_ids)
