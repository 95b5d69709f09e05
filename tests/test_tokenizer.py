"""Real vocabulary entries in byte-level BPE: exact round trip, coarsening, unchanged text without the words,
spaces kept, normal (not special) tokens, identical after save and reload; refusals for other families."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoTokenizer

from vocab_expand import UnsupportedTokenizerError, expand
from vocab_expand.families import detect_family
from vocab_expand.tokenization import tokenizer_spec

from helpers import make_model, wrap
from tokenizer_checks import assert_coarsening

WORDS = ["Jehoshaphat", "Nebuchadnezzar", "prophets", "crêpes", "東京"]


@pytest.fixture(scope="module")
def expanded(tiny_tokenizer):
    model = make_model("tied", len(tiny_tokenizer))
    return expand(model, tiny_tokenizer, WORDS, forms="both")


def test_words_become_single_tokens_with_spaces_kept(expanded, tiny_tokenizer):
    tok = expanded.tokenizer
    text = "And Jehoshaphat said, Jehoshaphat! (Jehoshaphat) Nebuchadnezzar's prophets"
    tokens = tok.tokenize(text)
    assert tokens.count("ĠJehoshaphat") == 2 and "Jehoshaphat" in tokens  # mid and initial forms
    assert "ĠNebuchadnezzar" in tokens and "Ġprophets" in tokens
    assert tok.decode(tok(text)["input_ids"]) == text
    assert tok.decode(tok(" met Jehoshaphat")["input_ids"]) == " met Jehoshaphat"  # no "metJehoshaphat"
    assert not any(t.special for t in tok.added_tokens_decoder.values() if t.content in expanded.new_tokens)
    assert set(expanded.new_tokens) <= set(tok.get_vocab())
    assert len(expanded.new_tokens) == 2 * len(WORDS)


def test_inside_a_longer_word_nothing_changes(expanded, tiny_tokenizer):
    for text in (" Jehoshaphats", " Jehoshaphatite", " Nebuchadnezzarr", " prophetsX"):
        assert expanded.tokenizer.tokenize(text) == tiny_tokenizer.tokenize(text)


def test_save_and_reload_identical(expanded, tmp_path):
    expanded.tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert loaded.get_vocab() == expanded.tokenizer.get_vocab()
    text = "And Jehoshaphat spake unto 東京 and crêpes"
    assert loaded(text)["input_ids"] == expanded.tokenizer(text)["input_ids"]
    assert {i: str(t) for i, t in loaded.added_tokens_decoder.items()} == {
        i: str(t) for i, t in expanded.tokenizer.added_tokens_decoder.items()
    }


ALPHABET = st.sampled_from(list("abcdeXYZ éüñ東京🎉\u0301\t\n  ,.!'") + ["Jehoshaphat", "Nebuchadnezzar", "prophets"])
TEXTS = st.lists(ALPHABET, max_size=30).map("".join) | st.text(max_size=60)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=TEXTS)
def test_property_round_trip_and_coarsening(expanded, tiny_tokenizer, text):
    assert_coarsening(tiny_tokenizer, expanded.tokenizer, text, set(expanded.new_token_ids))
    if not any(w in text for w in WORDS):
        assert expanded.tokenizer(text)["input_ids"] == tiny_tokenizer(text)["input_ids"]


def test_merge_conflicts_are_refused():
    """A vocabulary entry that the merges never produce would change under ignore_merges: refuse."""
    vocab = {"Ġ": 0, "a": 1, "b": 2, "Ġa": 3, "Ġab": 4, "c": 5}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[("Ġ", "a")]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    family = detect_family(json.loads(backend.to_str()))
    assert family.reachable_merge_conflicts() == ["Ġab"]
    with pytest.raises(UnsupportedTokenizerError, match="ignore_merges"):
        family.extend([])


def test_unsupported_family_names_supported_ones_and_added_mode():
    backend = Tokenizer(models.WordPiece(vocab={"[UNK]": 0, "the": 1, "##s": 2}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = wrap(backend)
    with pytest.raises(UnsupportedTokenizerError, match="byte_level_bpe.*kind='added'"):
        expand(make_model("tied", 3), tok, ["word"])


def test_slow_tokenizer_is_a_clear_error():
    class Slow:
        pass

    with pytest.raises(TypeError, match="slow"):
        tokenizer_spec(Slow())
