"""Layouts of the tokenizers people use, beyond the shared family tests: special tokens outside the vocabulary
keep their ids (Llama 3, Qwen 2), reserved tokens reused in place, forms reported when dropped, entries that
text never produces refused, Unigram in both modes, and what the change of tokenizer class keeps."""

from __future__ import annotations

import json

import pytest
import torch
import transformers
from tokenizers import Tokenizer, models
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

from vocab_expand import expand
from vocab_expand.errors import InvalidInputError
from vocab_expand.config import ExpandConfig
from vocab_expand.expansion import plan_tokens
from vocab_expand.families import detect_family
from vocab_expand.families.sentencepiece import SentencePieceBPE
from vocab_expand.tokenization import next_free_id, tokenizer_spec

from helpers import llama2_style, llama3_style, make_model, unigram_style
from tokenizer_checks import assert_coarsening

CHAT = [{"role": "user", "content": "Who is Nebuchadnezzar?"}, {"role": "assistant", "content": "the king"}]


def test_the_issue_reproduction_keeps_the_special_id():
    """tokenizers renumbers added tokens missing from model.vocab on load; pinned, "<s>" stays 2."""
    t = Tokenizer(models.BPE(vocab={"a": 0, "b": 1}, merges=[]))
    t.add_special_tokens(["<s>"])
    spec = json.loads(t.to_str())
    unpinned = json.loads(json.dumps(spec))
    unpinned["model"]["vocab"]["ab"] = 3
    assert Tokenizer.from_str(json.dumps(unpinned)).token_to_id("<s>") == 3  # the bug, as tokenizers behaves
    spec["pre_tokenizer"] = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    family = detect_family(spec)
    entry = family.entry_for("ab", "initial")
    loaded = Tokenizer.from_str(json.dumps(family.extend([(entry, 3)])))
    assert loaded.token_to_id("<s>") == 2 and loaded.token_to_id("ab") == 3


@pytest.fixture(scope="module")
def llama3():
    return llama3_style(reserved=4)


def reserved_ids(tok) -> list[int]:
    return sorted(i for i, t in tok.added_tokens_decoder.items() if "reserved" in t.content)


def test_reuse_reserved_turns_reserved_tokens_into_the_words_in_place(llama3, tmp_path):
    model = make_model("untied", len(llama3))
    before_in = model.get_input_embeddings().weight.detach().clone()
    words = ["Nebuchadnezzar", "Jehoshaphat", "crêpes", "liquor", "prophets", "Abednego"]
    result = expand(model, llama3, words, reuse_reserved=True, input_init="subword", output_init="mean")
    reserved = reserved_ids(llama3)
    assert result.new_token_ids[:4] == reserved and result.new_token_ids[4:] == [len(llama3), len(llama3) + 1]
    assert result.report["reused_reserved_tokens"] == 4
    weight = result.model.get_input_embeddings().weight
    assert weight.shape[0] == len(llama3) + 2
    for token_id, pieces in zip(result.new_token_ids, result.pieces):
        assert torch.allclose(weight[token_id], before_in[pieces].mean(0), atol=1e-6)
    kept = [i for i in range(len(llama3)) if i not in reserved]
    assert torch.equal(weight[kept], before_in[kept])
    result.save(tmp_path / "out")
    loaded = AutoTokenizer.from_pretrained(tmp_path / "out")
    assert len(loaded) == len(llama3) + 2 and not reserved_ids(loaded)
    assert loaded.convert_ids_to_tokens(result.new_token_ids) == result.new_tokens
    for token_id, token in llama3.added_tokens_decoder.items():
        if token_id not in reserved:
            assert loaded.convert_ids_to_tokens(token_id) == token.content
    ids = loaded.apply_chat_template(CHAT, tokenize=True, return_dict=False)
    assert reserved[0] in ids and loaded.decode(ids) == llama3.decode(llama3.apply_chat_template(CHAT, tokenize=True,
                                                                                                return_dict=False))
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "out").get_input_embeddings().weight.shape[0] == len(loaded)


def test_reserved_tokens_in_use_are_kept_and_fit_is_refused(llama3):
    tok = llama3_style(reserved=3)
    tok.chat_template = tok.chat_template + "<|reserved_special_token_0|>"
    plan = plan_tokens(tok, ["Nebuchadnezzar"], ExpandConfig(reuse_reserved=True))
    assert plan.new_token_ids == [reserved_ids(tok)[1]]
    with pytest.raises(InvalidInputError, match="reuse_reserved"):
        expand(make_model("untied", len(llama3)), llama3, ["Nebuchadnezzar"], reuse_reserved=True,
               corpus=["Nebuchadnezzar the king"] * 4)
    with pytest.raises(InvalidInputError, match="kind='vocab'"):
        plan_tokens(llama3, ["<tool>"], ExpandConfig(reuse_reserved=True, kind="added"))


def test_a_dropped_form_is_reported_even_when_another_form_was_added(llama3):
    """Llama 3's regex keeps "-Jehu" whole at a line's start but splits " -Jehu" into " -" and "Jehu"."""
    plan = plan_tokens(llama3, ["-Jehu", "Nebuchadnezzar"], ExpandConfig(forms="both"))
    assert [(e.word, e.form) for e in plan.entries] == [("-Jehu", "initial"), ("Nebuchadnezzar", "mid"),
                                                        ("Nebuchadnezzar", "initial")]
    assert [(s.word, s.form) for s in plan.skipped] == [("-Jehu", "mid")]
    assert "pre-tokens" in plan.skipped[0].reason
    result = expand(make_model("tied", len(llama3)), llama3, ["-Jehu"], forms="both")
    assert result.report["words_skipped"] == 0 and len(result.report["skipped"]) == 1


def test_an_entry_text_never_produces_is_skipped_with_the_reason(monkeypatch):
    """The old Llama 2 entry ("▁▁word", from normalizing " word" with the Prepend) is caught by expand's check."""
    tok = llama2_style()
    monkeypatch.setattr(SentencePieceBPE, "form_token",
                        lambda self, word, form: self.normalize(" " + word if form == "mid" else word))
    plan = plan_tokens(tok, ["Nebuchadnezzar"], ExpandConfig())
    assert plan.entries == [] and plan.new_token_ids == [] and len(plan.tokenizer) == len(tok)
    assert [s.form for s in plan.skipped] == [""]
    assert "never produces '▁▁Nebuchadnezzar'" in plan.skipped[0].reason


def test_llama2_layout_adds_what_text_produces():
    plan = plan_tokens(llama2_style(), ["Nebuchadnezzar"], ExpandConfig(forms="both"))
    assert [e.token for e in plan.entries] == ["▁Nebuchadnezzar", "Nebuchadnezzar"]
    ids = plan.tokenizer("Nebuchadnezzar said to Nebuchadnezzar:\nNebuchadnezzar!")["input_ids"]
    assert [i for i in ids if i in plan.new_token_ids] == [plan.new_token_ids[0]] * 2 + [plan.new_token_ids[1]]


def test_unigram_vocab_and_added_modes(tmp_path):
    tok = unigram_style()
    spec = tokenizer_spec(tok)
    assert isinstance(spec["model"]["vocab"], list) and next_free_id(spec) == len(tok)
    added = expand(make_model("tied", len(tok)), tok, ["<tool_call>"], kind="added")
    assert added.new_token_ids == [len(tok)]
    result = expand(make_model("untied", len(tok)), tok, ["Nebuchadnezzar", "Jehoshaphat"])
    assert result.report["family"] == "sentencepiece_unigram" and result.new_token_ids == [len(tok), len(tok) + 1]
    result.save(tmp_path / "out")
    loaded = AutoTokenizer.from_pretrained(tmp_path / "out")
    text = "Nebuchadnezzar met Jehoshaphat; Nebuchadnezzarite <extra_id_0>"
    ids = loaded(text)["input_ids"]
    assert ids == result.tokenizer(text)["input_ids"]
    # Inside "Nebuchadnezzarite" too, since the original best path had a boundary after "zzar" (a coarsening)
    assert ids.count(len(tok)) == 2 and ids.count(len(tok) + 1) == 1
    assert_coarsening(tok, loaded, text, set(result.new_token_ids))
    assert loaded.convert_tokens_to_ids("<extra_id_0>") == tok.convert_tokens_to_ids("<extra_id_0>")


def test_unigram_longer_word_beats_a_shorter_new_word_plus_its_rest():
    """With a flat margin "▁offering" + "s" would tie "▁offerings"; the margin grows with the length."""
    plan = plan_tokens(unigram_style(), ["offering", "offerings"], ExpandConfig())
    assert plan.skipped == [] and len(plan.entries) == 2
    ids = plan.tokenizer("the offerings and the offering", add_special_tokens=False)["input_ids"]
    assert [i for i in ids if i in plan.new_token_ids] == [plan.new_token_ids[1], plan.new_token_ids[0]]


def test_unigram_refuses_words_with_unknown_characters():
    plan = plan_tokens(unigram_style(), ["Zürich"], ExpandConfig())
    assert plan.entries == [] and "lacks" in plan.skipped[0].reason


def test_the_generic_class_keeps_the_original_classes_api_and_padding_side():
    """Reloaded as PreTrainedTokenizerFast: Llama, Qwen 2, Gemma and GPT-2 classes add no public method in
    transformers 5 (T5's sentinel helpers are the known loss), and Llama's left padding is kept."""
    generic = set(dir(PreTrainedTokenizerFast))
    for name in ("LlamaTokenizer", "Qwen2Tokenizer", "GemmaTokenizer", "GPT2Tokenizer"):
        extra = {a for a in dir(getattr(transformers, name)) if not a.startswith("_")} - generic
        assert extra == set(), name
    tok = llama3_style(reserved=2)
    tok.padding_side, tok.pad_token = "left", "<|end_of_text|>"
    plan = plan_tokens(tok, ["Nebuchadnezzar"], ExpandConfig())
    assert plan.tokenizer.padding_side == "left"
    batch = plan.tokenizer(["I saw Nebuchadnezzar", "the king of Israel, Nebuchadnezzar"], padding=True)
    assert batch["attention_mask"][0][0] == 0 and batch["input_ids"][0][-1] == plan.new_token_ids[0]


@pytest.mark.slow
def test_real_llama3_reserved_tokens_reused_and_specials_kept(tmp_path):
    """Meta Llama 3's vocabulary and 256 specials (quicktok-v1 ships the ranks): words take reserved ids."""
    pytest.importorskip("quicktok")
    from helpers import real_llama3

    tok = real_llama3()
    plan = plan_tokens(tok, ["Jehoshaphat", "Nebuchadnezzar"], ExpandConfig(reuse_reserved=True))
    assert plan.new_token_ids == [128002, 128003] and len(plan.tokenizer) == len(tok) == 128256
    plan.tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    for name in ("<|begin_of_text|>", "<|eot_id|>", "<|start_header_id|>", "<|reserved_special_token_250|>"):
        assert loaded.convert_tokens_to_ids(name) == tok.convert_tokens_to_ids(name)
    ids = loaded("And Jehoshaphat said")["input_ids"]
    assert ids[0] == 128000 and 128002 in ids and loaded.decode(ids[1:]) == "And Jehoshaphat said"


def test_unigram_without_metaspace_is_refused_clearly_and_added_mode_works():
    from tokenizers import pre_tokenizers

    from vocab_expand.errors import UnsupportedTokenizerError

    backend = Tokenizer(models.Unigram([("<unk>", 0.0), ("a", -1.0), ("b", -2.0), ("ab", -2.5)], unk_id=0))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>")
    with pytest.raises(UnsupportedTokenizerError, match="sentencepiece_unigram.*kind='added'"):
        plan_tokens(tok, ["abba"], ExpandConfig())
    assert plan_tokens(tok, ["<x>"], ExpandConfig(kind="added")).new_token_ids == [4]


def test_diagnose_and_compare_refuse_reuse_reserved(llama3, tmp_path):
    """They measure new tokens as the ids after the old vocabulary; reused reserved ids would give wrong
    figures without an error."""
    from vocab_expand import compare, diagnose
    from vocab_expand.corpus import Corpus

    corpus = Corpus("tiny", train=["Nebuchadnezzar the king"] * 40, heldout=["Nebuchadnezzar the king"] * 4)
    model = make_model("untied", len(llama3))
    with pytest.raises(InvalidInputError, match="reuse_reserved"):
        diagnose(model, llama3, ["Nebuchadnezzar"], corpus, ["mean"], progress=False, reuse_reserved=True)
    with pytest.raises(InvalidInputError, match="reuse_reserved"):
        compare(model, corpus, ["Nebuchadnezzar"], ["mean"], tmp_path / "runs", tokenizer=llama3, progress=False,
                expand_options={"reuse_reserved": True})
    assert not (tmp_path / "runs").exists()
