"""The rules vLLM imposes on a saved folder (checked statically: vLLM does not install here), on every layout:
vocab_size equals the rows, padding rows past the tokenizer cannot be sampled, new ids are inside the vocabulary
vLLM reports. Every save records the check in expansion.json; broken folders are caught, one line per problem."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

import vocab_expand as ve
from vocab_expand.serving import check_serving, unsafe_padding_rows

from helpers import SPARE_ROWS, make_model

WORDS = ["Jehoshaphat", "prophets", "Tokyo"]


def saved(tmp_path, tokenizer, layout: str, **options) -> tuple[ve.Expansion, dict]:
    rows = len(tokenizer) + (SPARE_ROWS if layout == "padded" else 0)
    model = make_model("tied" if layout == "padded" else layout, rows)
    expansion = ve.expand(model, tokenizer, WORDS, input_init="subword", output_init="mean", **options)
    expansion.save(tmp_path / "out")
    return expansion, json.loads((tmp_path / "out" / "expansion.json").read_text())["serving"]["vllm"]


def test_the_padding_rule_by_hand():
    head = torch.tensor([[1.0, 0.0], [3.0, 0.0], [2.0, 0.0], [0.0, 0.0]])
    assert unsafe_padding_rows(head, None, real=2, reference=2) == [3]  # row 2 is the mean, row 3 zeros
    bias = torch.tensor([0.0, 2.0, 1.0, -1e5])
    assert unsafe_padding_rows(head, bias, real=2, reference=2) == []  # a bias of -1e5 is never sampled
    assert unsafe_padding_rows(head, torch.tensor([0.0, 2.0, 5.0, -1e5]), real=2, reference=2) == [2]


@pytest.mark.parametrize("layout", ["tied", "untied", "bias"])
def test_pad_to_multiple_of_gives_mean_rows_that_pass(layout, tiny_tokenizer, tmp_path):
    expansion, vllm = saved(tmp_path, tiny_tokenizer, layout, pad_to_multiple_of=64)
    rows = expansion.report["rows_after"]
    assert rows % 64 == 0 and vllm["padding_rows"] == rows - len(expansion.tokenizer) > 0
    assert vllm["ok"] and vllm["unsafe_padding_rows"] == 0 and vllm["problems"] == []
    assert vllm["config_vocab_size"] == vllm["engine_vocab_size"] == rows
    assert set(vllm["rows"].values()) == {rows}


def test_qwen_style_spare_rows_are_reused_and_the_rest_noted(tiny_tokenizer, tmp_path):
    expansion, vllm = saved(tmp_path, tiny_tokenizer, "padded")
    assert expansion.report["reused_spare_rows"] == len(WORDS) and vllm["ok"]
    assert vllm["kept_spare_rows"] == SPARE_ROWS - len(WORDS) and "spare row" in vllm["notes"][0]
    assert max(expansion.new_token_ids) < vllm["engine_vocab_size"] == len(tiny_tokenizer) + SPARE_ROWS


def test_zero_padding_rows_and_a_wrong_vocab_size_are_problems(tiny_tokenizer, tmp_path):
    expansion, _ = saved(tmp_path, tiny_tokenizer, "untied", pad_to_multiple_of=64)
    weights = load_file(tmp_path / "out" / "model.safetensors")
    weights["lm_head.weight"][len(expansion.tokenizer):] = 0  # what zero-initialized padding would be
    save_file(weights, tmp_path / "out" / "model.safetensors", metadata={"format": "pt"})
    config_path = tmp_path / "out" / "config.json"
    config_path.write_text(json.dumps(json.loads(config_path.read_text()) | {"vocab_size": len(expansion.tokenizer)}))
    report = check_serving(tmp_path / "out")
    assert not report["ok"] and report["unsafe_padding_rows"] == report["padding_rows"]
    assert any("not the mean row" in p for p in report["problems"])
    assert any("differs from the input rows" in p for p in report["problems"])
    assert all("\n" not in p for p in report["problems"])


def test_new_ids_outside_the_matrices_are_problems(tiny_tokenizer, tmp_path):
    expansion, vllm = saved(tmp_path, tiny_tokenizer, "tied")
    outside = vllm["engine_vocab_size"] + 3
    report = check_serving(tmp_path / "out", expansion.new_token_ids + [outside])
    assert [p.split(" is ")[0] for p in report["problems"] if "outside" in p] == [f"new id {outside}"]
    assert any(p.startswith(f"new id {outside} has no row") for p in report["problems"])


def test_expand_checkpoint_records_the_check_too(tiny_tokenizer, tmp_path):
    make_model("untied", len(tiny_tokenizer)).save_pretrained(tmp_path / "model")
    tiny_tokenizer.save_pretrained(tmp_path / "model")
    result = ve.expand_checkpoint(tmp_path / "model", WORDS, tmp_path / "out", pad_to_multiple_of=64)
    serving = json.loads((tmp_path / "out" / "expansion.json").read_text())["serving"]
    assert serving == result.report["serving"] and serving["vllm"]["ok"]
    assert serving["vllm"]["padding_rows"] > 0 and serving["tokenizer"]["autotokenizer_exact"]


def test_bfloat16_mean_padding_rows_pass_within_their_rounding(tiny_tokenizer, tmp_path):
    model = make_model("untied", len(tiny_tokenizer), dtype=torch.bfloat16)
    expansion = ve.expand(model, tiny_tokenizer, WORDS, input_init="subword", output_init="mean", pad_to_multiple_of=64)
    expansion.save(tmp_path / "out")
    vllm = json.loads((tmp_path / "out" / "expansion.json").read_text())["serving"]["vllm"]
    assert vllm["ok"] and vllm["padding_rows"] > 0


def test_warnings_say_each_problem_in_one_line():
    from vocab_expand.serving import serving_warnings

    serving = {"tokenizer": {"autotokenizer_exact": False, "autotokenizer_class": "Qwen2Tokenizer"},
               "vllm": {"problems": ["config vocab_size 5 differs from the input rows (8)"]}}
    lines = serving_warnings(serving)
    assert lines[0].startswith("AutoTokenizer loads this folder as Qwen2Tokenizer")
    assert lines[1] == "vLLM: config vocab_size 5 differs from the input rows (8)" and len(lines) == 2
    assert serving_warnings(serving | {"tokenizer": {"autotokenizer_exact": True}, "vllm": {"problems": []}}) == []
