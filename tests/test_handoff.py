"""The PEFT hand-off: LoRA plus exactly the new rows trains, saves small, reloads onto the saved expansion,
and merges to the same logits."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import make_model
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

import vocab_expand as ve

peft = pytest.importorskip("peft")
WORDS = ["Jehoshaphat", "prophets", "Tokyo"]
TEXT = "And Jehoshaphat sent the prophets to Tokyo, and the prophets said unto Jehoshaphat: go to Tokyo."


def _train(model: torch.nn.Module, ids: torch.Tensor, steps: int = 4) -> None:
    torch.manual_seed(0)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(steps):
        optimizer.zero_grad()
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()


@pytest.mark.parametrize("layout", ["tied", "untied"])
def test_lora_with_new_rows_trains_saves_small_reloads_and_merges(layout, tiny_tokenizer, tmp_path):
    base = make_model(layout, len(tiny_tokenizer))
    expansion = ve.expand(base, tiny_tokenizer, WORDS)
    expansion.save(tmp_path / "expanded")
    config = ve.lora_config(expansion, r=2, target_modules=["q_proj", "v_proj"])
    k, d = len(expansion.new_token_ids), base.config.hidden_size
    indices = config.trainable_token_indices
    assert (indices == expansion.new_token_ids) if layout == "tied" else (
        set(indices) == {"model.embed_tokens", "lm_head"} and all(v == expansion.new_token_ids for v in indices.values()))
    saved = json.loads((tmp_path / "expanded" / "expansion.json").read_text())["fine_tuning"]
    assert saved["new_token_ids"] == expansion.new_token_ids and saved["peft_lora"]["trainable_token_indices"]

    model = peft.get_peft_model(expansion.model, config)
    ids = expansion.tokenizer(TEXT, return_tensors="pt")["input_ids"]
    assert set(expansion.new_token_ids) <= set(ids[0].tolist())
    _train(model, ids)
    model.eval()
    with torch.no_grad():
        trained = model(input_ids=ids).logits
    model.save_pretrained(tmp_path / "adapter")

    tensors = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    lora = sum(t.numel() for name, t in tensors.items() if "lora_" in name)
    rows = sum(t.numel() for name, t in tensors.items() if "lora_" not in name)
    layers = base.config.num_hidden_layers
    assert lora == layers * 2 * (2 * d * 2)  # q and v per layer, A [2, d] and B [d, 2] each
    assert rows == k * d * (1 if layout == "tied" else 2)  # k rows per matrix, never whole matrices

    fresh = AutoModelForCausalLM.from_pretrained(tmp_path / "expanded")
    reloaded = peft.PeftModel.from_pretrained(fresh, tmp_path / "adapter").eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=ids).logits, trained)
        merged = reloaded.merge_and_unload()
        torch.testing.assert_close(merged(input_ids=ids).logits, trained, rtol=1e-4, atol=1e-5)
        before = AutoModelForCausalLM.from_pretrained(tmp_path / "expanded")(input_ids=ids).logits
    assert (trained - before).abs().max() > 1e-3  # the adapter and the new rows did train


def test_lora_config_refuses_a_bad_rank(tiny_tokenizer):
    expansion = ve.expand(make_model("tied", len(tiny_tokenizer)), tiny_tokenizer, WORDS)
    with pytest.raises(ve.InvalidInputError, match="r must be"):
        ve.lora_config(expansion, r=0)


@pytest.mark.parametrize("layout", ["tied", "untied"])
def test_lora_config_from_a_saved_folder_equals_the_in_memory_one(layout, tiny_tokenizer, tmp_path):
    """ve.lora_config("OUT/") reads the ids and module names from expansion.json, and they fit the reloaded model."""
    expansion = ve.expand(make_model(layout, len(tiny_tokenizer)), tiny_tokenizer, WORDS)
    expansion.save(tmp_path / "out")
    from_folder = ve.lora_config(tmp_path / "out", r=2, target_modules=["q_proj"])
    assert from_folder.trainable_token_indices == ve.lora_config(expansion, r=2).trainable_token_indices
    assert ve.lora_config(str(tmp_path / "out")).r == 16
    model = peft.get_peft_model(AutoModelForCausalLM.from_pretrained(tmp_path / "out"), from_folder)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad and "trainable_tokens" in n}
    assert len(trainable) == (1 if layout == "tied" else 2)


def test_lora_config_refuses_a_model_and_a_folder_without_expansion_json(tiny_tokenizer, model_dir):
    with pytest.raises(ve.InvalidTypeError, match="what expand returned"):
        ve.lora_config(make_model("tied", len(tiny_tokenizer)))
    with pytest.raises(ve.MissingResourceError, match="no expansion.json"):
        ve.lora_config(model_dir)
