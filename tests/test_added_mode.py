"""Added-token mode for control strings: flags users know, not special by default, saved and reloaded exactly."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from vocab_expand import expand

from helpers import make_model

CONTROL = ["<tool_call>", "[ANSWER]"]


@pytest.mark.parametrize("flags", [{}, {"rstrip": True, "lstrip": True}, {"single_word": True, "normalized": True}])
def test_flags_saved_and_reloaded_exactly(tiny_tokenizer, tmp_path, flags):
    model = make_model("untied", len(tiny_tokenizer))
    result = expand(model, tiny_tokenizer, CONTROL, kind="added", **flags)
    assert result.report["family"] == "added" and result.new_tokens == CONTROL
    result.save(tmp_path / "out")
    loaded = AutoTokenizer.from_pretrained(tmp_path / "out")
    for token_id in result.new_token_ids:
        before, after = result.tokenizer.added_tokens_decoder[token_id], loaded.added_tokens_decoder[token_id]
        for flag in ("lstrip", "rstrip", "single_word", "normalized", "special"):
            assert getattr(after, flag) == getattr(before, flag) == flags.get(flag, False), flag
    text = "call <tool_call>{}</tool_call> then [ANSWER] 42"
    assert loaded(text)["input_ids"] == result.tokenizer(text)["input_ids"]
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "out").get_input_embeddings().weight.shape[0] == len(loaded)


def test_control_strings_are_one_token_and_not_skipped_when_decoding(tiny_tokenizer):
    result = expand(make_model("untied", len(tiny_tokenizer)), tiny_tokenizer, CONTROL, kind="added")
    tok = result.tokenizer
    ids = tok("x <tool_call>{} [ANSWER] y", add_special_tokens=False)["input_ids"]
    assert [i for i in ids if i in result.new_token_ids] == result.new_token_ids
    assert tok.decode(ids, skip_special_tokens=True) == "x <tool_call>{} [ANSWER] y"
    # input rows from the strings' old pieces (subword), output rows the mean, by default
    weight = result.model.get_input_embeddings().weight
    head = result.model.get_output_embeddings().weight
    n = len(tiny_tokenizer)
    assert len(result.pieces[0]) > 1
    for token_id, pieces in zip(result.new_token_ids, result.pieces):
        assert torch.allclose(weight[token_id], weight[pieces].mean(0), atol=1e-6)
        assert torch.allclose(head[token_id], head[:n].mean(0), atol=1e-6)


def test_special_when_asked(tiny_tokenizer):
    result = expand(make_model("tied", len(tiny_tokenizer)), tiny_tokenizer, CONTROL, kind="added", special=True)
    tok = result.tokenizer
    assert all(tok.added_tokens_decoder[i].special for i in result.new_token_ids)
    ids = tok("a <tool_call> b", add_special_tokens=False)["input_ids"]
    assert "<tool_call>" not in tok.decode(ids, skip_special_tokens=True)


def test_added_mode_skips(tiny_tokenizer):
    result = expand(make_model("tied", len(tiny_tokenizer)), tiny_tokenizer,
                    ["<tool_call>", "<tool_call>", " ", "<|endoftext|>"], kind="added")
    reasons = {s.word: s.reason for s in result.skipped}
    assert result.new_tokens == ["<tool_call>"]
    assert "duplicate" in reasons["<tool_call>"] and "empty" in reasons[" "] and "already" in reasons["<|endoftext|>"]
