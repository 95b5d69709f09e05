"""The resizing invariants of docs/ARCHITECTURE.md on tiny models of every layout (tied, untied, head bias,
padded beyond the tokenizer), plus bad input."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from vocab_expand import ExpandConfig, expand, hewitt_bound
from vocab_expand.rows.layout import embedding_layout

from helpers import SPARE_ROWS, make_model

WORDS = ["Jehoshaphat", "Nebuchadnezzar", "prophets", "liquor"]


def snapshot(model):
    layout = embedding_layout(model)
    out = {"input": layout.input.weight.detach().clone()}
    if layout.output is not None:
        out["output"] = layout.output.weight.detach().clone()
        if layout.has_bias:
            out["bias"] = layout.output.bias.detach().clone()
    return out


def test_old_rows_bit_identical_and_shapes(tiny):
    layout_name, model, tok = tiny
    before = snapshot(model)
    n_params = sum(p.numel() for p in model.parameters())
    result = expand(model, tok, WORDS)
    after = snapshot(result.model)
    k = len(result.new_tokens)
    assert k == 4 and result.new_token_ids == list(range(len(tok), len(tok) + 4))
    old_rows = before["input"].shape[0]
    expected_rows = old_rows if layout_name == "padded" else old_rows + k
    for name, old in before.items():
        assert after[name].shape[0] == expected_rows
        assert after[name].shape[1:] == old.shape[1:]
        keep = len(tok)  # rows of old ids
        assert torch.equal(after[name][:keep], old[:keep]), name
        assert torch.isfinite(after[name]).all()
    assert result.model.config.get_text_config().vocab_size == expected_rows
    assert len(result.tokenizer) == len(tok) + k
    layout = embedding_layout(result.model)
    assert layout.tied == (layout_name in ("tied", "padded"))
    if layout.tied:  # same storage, same parameter count as before plus the new rows only
        assert layout.output.weight.data_ptr() == layout.input.weight.data_ptr()
    new_params = sum(p.numel() for p in result.model.parameters())
    per_row = before["input"].shape[1] * (1 if layout.tied else 2) + (1 if "bias" in before else 0)
    assert new_params == n_params + (expected_rows - old_rows) * per_row


def test_spare_rows_reused_in_order_and_later_rows_untouched(tiny_tokenizer):
    model = make_model("tied", len(tiny_tokenizer) + SPARE_ROWS)
    before = model.get_input_embeddings().weight.detach().clone()
    result = expand(model, tiny_tokenizer, WORDS[:2], input_init="mean", output_init="mean")
    after = result.model.get_input_embeddings().weight
    n = len(tiny_tokenizer)
    assert after.shape[0] == n + SPARE_ROWS and result.report["reused_spare_rows"] == 2
    assert torch.allclose(after[n : n + 2], before[:n].mean(0).expand(2, -1), atol=1e-6)
    assert torch.equal(after[n + 2 :], before[n + 2 :])  # spare rows past the used ones untouched


def test_mean_rows_match_the_old_mean(tiny):
    _, model, tok = tiny
    before = snapshot(model)
    result = expand(model, tok, WORDS, input_init="mean", output_init="mean")
    after = snapshot(result.model)
    ids = result.new_token_ids
    n = len(tok)
    for name, old in before.items():
        atol, rtol = (1e-5, 1e-2) if name == "bias" else (1e-3, 1e-1)
        expected = old[:n].float().mean(0)
        assert torch.allclose(after[name][ids].float().mean(0), expected, atol=atol, rtol=rtol), name


def test_untied_head_and_bias_get_their_own_strategy(tiny_tokenizer):
    model = make_model("bias", len(tiny_tokenizer))
    result = expand(model, tiny_tokenizer, WORDS, input_init="zeros", output_init="mean")
    inp = result.model.get_input_embeddings().weight
    head = result.model.get_output_embeddings()
    ids = result.new_token_ids
    n = len(tiny_tokenizer)
    assert torch.equal(inp[ids], torch.zeros(4, inp.shape[1]))
    assert torch.allclose(head.weight[ids], head.weight[:n].mean(0).expand(4, -1), atol=1e-6)
    assert torch.allclose(head.bias[ids], head.bias[:n].mean().expand(4), atol=1e-6)


@pytest.mark.parametrize("policy,expect", [("output", "mean"), ("input", "subword")])
def test_tied_model_shared_row_follows_tie_policy(tiny_tokenizer, policy, expect):
    model = make_model("tied", len(tiny_tokenizer))
    result = expand(model, tiny_tokenizer, WORDS, input_init="subword", output_init="mean", tie_policy=policy)
    assert result.report["input_strategy"] == result.report["output_strategy"] == expect
    weight = result.model.get_input_embeddings().weight
    row = weight[result.new_token_ids[0]]
    pieces = result.pieces[0]
    want = weight[pieces].mean(0) if expect == "subword" else weight[: len(tiny_tokenizer)].mean(0)
    assert torch.allclose(row, want, atol=1e-6)


def test_untie_policy_gives_two_matrices_that_survive_save_and_load(tiny_tokenizer, tmp_path):
    model = make_model("tied", len(tiny_tokenizer))
    result = expand(model, tiny_tokenizer, WORDS, tie_policy="untie")
    layout = embedding_layout(result.model)
    assert not layout.tied
    ids = result.new_token_ids
    assert not torch.equal(layout.input.weight[ids], layout.output.weight[ids])
    result.save(tmp_path / "out")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert torch.equal(loaded.get_output_embeddings().weight, layout.output.weight)
    assert torch.equal(loaded.get_input_embeddings().weight, layout.input.weight)


def test_save_and_reload_keeps_every_shape_and_row(tiny, tmp_path):
    _, model, tok = tiny
    result = expand(model, tok, WORDS)
    result.save(tmp_path / "out")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    loaded_tok = AutoTokenizer.from_pretrained(tmp_path / "out")
    assert loaded_tok.get_vocab() == result.tokenizer.get_vocab()
    for name, tensor in snapshot(result.model).items():
        assert torch.equal(snapshot(loaded)[name], tensor), name
    assert loaded.config.get_text_config().vocab_size == result.model.config.get_text_config().vocab_size
    assert (tmp_path / "out" / "expansion.json").is_file()


def test_pad_to_multiple_of(tiny_tokenizer):
    model = make_model("untied", len(tiny_tokenizer))
    result = expand(model, tiny_tokenizer, WORDS, pad_to_multiple_of=64)
    rows = result.model.get_input_embeddings().weight.shape[0]
    assert rows % 64 == 0 and rows >= len(tiny_tokenizer) + 4 and rows - 64 < len(tiny_tokenizer) + 4
    head = result.model.get_output_embeddings().weight
    pad = slice(len(tiny_tokenizer) + 4, rows)
    assert torch.allclose(head[pad], head[: len(tiny_tokenizer)].mean(0).expand(rows - pad.start, -1), atol=1e-6)
    assert result.report["padding_rows"] == rows - pad.start
    assert result.report["hewitt_bound_nats"] == pytest.approx(hewitt_bound(rows - len(tiny_tokenizer), len(tiny_tokenizer)))
    for bad in (2.5, "8", True):
        with pytest.raises(TypeError, match="pad_to_multiple_of must be a positive int"):
            expand(model, tiny_tokenizer, WORDS, pad_to_multiple_of=bad)
    with pytest.raises(ValueError, match="must be positive"):
        expand(model, tiny_tokenizer, WORDS, pad_to_multiple_of=0)


def test_tie_weights_and_post_init_change_no_row(tiny):
    _, model, tok = tiny
    result = expand(model, tok, WORDS)
    before = snapshot(result.model)
    result.model.post_init()
    result.model.tie_weights()
    for name, tensor in snapshot(result.model).items():
        assert torch.equal(tensor, before[name])


def test_forward_pass_over_new_tokens(tiny):
    _, model, tok = tiny
    result = expand(model, tok, WORDS)
    batch = result.tokenizer(["And Jehoshaphat said to the prophets"], return_tensors="pt")
    assert any(i in result.new_token_ids for i in batch["input_ids"][0].tolist())
    logits = result.model(**batch).logits
    assert logits.shape[-1] == result.model.get_input_embeddings().weight.shape[0]
    assert torch.isfinite(logits).all()


def test_caller_objects_untouched_unless_inplace(tiny_tokenizer):
    model = make_model("untied", len(tiny_tokenizer))
    before = snapshot(model)
    vocab = tiny_tokenizer.get_vocab()
    expand(model, tiny_tokenizer, WORDS)
    assert tiny_tokenizer.get_vocab() == vocab and len(tiny_tokenizer) == len(vocab)
    assert all(torch.equal(t, before[n]) for n, t in snapshot(model).items())
    result = expand(model, tiny_tokenizer, WORDS, inplace=True)
    assert result.model is model and model.get_input_embeddings().weight.shape[0] == len(vocab) + 4


def test_expanding_by_nothing_changes_nothing(tiny):
    _, model, tok = tiny
    before = snapshot(model)
    result = expand(model, tok, ["the", "  ", "said"])  # all already single tokens or empty
    assert result.new_tokens == [] and len(result.skipped) == 3
    assert result.tokenizer.get_vocab() == tok.get_vocab()
    for name, tensor in snapshot(result.model).items():
        assert torch.equal(tensor, before[name])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_models(tiny_tokenizer, dtype):
    model = make_model("untied", len(tiny_tokenizer), dtype=dtype)
    before = snapshot(model)
    result = expand(model, tiny_tokenizer, WORDS, input_init="mean_cov", output_init="mean")
    after = snapshot(result.model)
    for name, old in before.items():
        assert after[name].dtype == dtype and torch.equal(after[name][: old.shape[0]], old)
        assert torch.isfinite(after[name]).all()


def test_same_seed_same_bytes(tiny_tokenizer):
    model = make_model("untied", len(tiny_tokenizer))
    a = expand(model, tiny_tokenizer, WORDS, input_init="random", output_init="mean_cov", seed=7)
    b = expand(model, tiny_tokenizer, WORDS, input_init="random", output_init="mean_cov", seed=7)
    c = expand(model, tiny_tokenizer, WORDS, input_init="random", output_init="mean_cov", seed=8)
    assert all(torch.equal(t, snapshot(b.model)[n]) for n, t in snapshot(a.model).items())
    assert not torch.equal(snapshot(a.model)["input"], snapshot(c.model)["input"])


def test_bad_input_is_a_clear_error_or_a_reported_skip(tiny_tokenizer):
    model = make_model("tied", len(tiny_tokenizer))
    with pytest.raises(ValueError, match="no words given"):
        expand(model, tiny_tokenizer, [])
    with pytest.raises(TypeError, match="every word must be a str"):
        expand(model, tiny_tokenizer, ["ok", 3])
    with pytest.raises(TypeError, match="not one string"):
        expand(model, tiny_tokenizer, "Jehoshaphat")
    with pytest.raises(ValueError, match="unknown strategy 'nope'"):
        expand(model, tiny_tokenizer, WORDS, input_init="nope")
    with pytest.raises(ValueError, match="forms must be one of"):
        expand(model, tiny_tokenizer, WORDS, forms="sideways")
    with pytest.raises(TypeError, match="unexpected keyword"):
        expand(model, tiny_tokenizer, WORDS, colour="blue")
    result = expand(model, tiny_tokenizer, ["Jehoshaphat", "Jehoshaphat", "", "the", "New York"])
    reasons = dict((s.word, s.reason) for s in result.skipped)
    assert result.new_tokens == ["ĠJehoshaphat"]
    assert "empty" in reasons[""] and "already a single token" in reasons["the"]
    assert "pre-tokens" in reasons["New York"] and "kind='added'" in reasons["New York"]
    assert [s.reason for s in result.skipped if s.word == "Jehoshaphat"] == ["duplicate of an earlier word"]


def test_config_defaults_are_the_documented_ones():
    config = ExpandConfig()
    assert (config.input_init, config.output_init, config.seed, config.pad_to_multiple_of) == ("auto", "auto", 0, None)
    assert (config.resolved(False).input_init, config.resolved(False).output_init) == ("subword", "mean")
    assert (config.resolved(True).input_init, config.resolved(True).output_init) == ("distill", "fit")
    explicit = ExpandConfig(input_init="zeros", output_init="mean").resolved(True)
    assert (explicit.input_init, explicit.output_init) == ("zeros", "mean")


def test_none_is_a_value_not_the_default(tiny_tokenizer):
    """expand(**options) keeps None where None means something (distill_max_windows=None: no cap)."""
    model = make_model("untied", len(tiny_tokenizer))
    result = expand(model, tiny_tokenizer, ["Jehoshaphat"], distill_max_windows=None, fit_reg=None)
    assert result.report["config"]["distill_max_windows"] is None
    assert expand(model, tiny_tokenizer, ["Jehoshaphat"]).report["config"]["distill_max_windows"] == 8192
