"""The README's fine-tuning lines with TRL's SFTTrainer: two steps on a tiny expanded model, tied, untied and
with a head bias, then merge_and_unload keeps every old row bit for bit and changes the new ones, and the merged
folder (ve.save_model) still loads with AutoTokenizer and keeps the new tokens.

Without lora_config's workaround (handoff.expose_head_bias) SFTTrainer fails at step 0: its fused LM-head loss
reads lm_head.bias, which PEFT's TrainableTokensWrapper does not forward."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import vocab_expand as ve

from helpers import TINY_TEXT, llama3_style, make_model

trl = pytest.importorskip("trl")
peft = pytest.importorskip("peft")
datasets = pytest.importorskip("datasets")
WORDS = ["Jehoshaphat", "Nebuchadnezzar"]
TEXTS = [f"{line} Then Jehoshaphat and Nebuchadnezzar spoke." for line in TINY_TEXT]


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """The trainer leaves Accelerate's process-wide state (its mixed precision) set; later tests build their own."""
    yield
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)


def rows(model: torch.nn.Module) -> list[torch.Tensor]:
    """Copies of the input matrix, and of the head when it has its own."""
    embedding, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    return [embedding.detach().clone()] + ([] if head is embedding else [head.detach().clone()])


@pytest.mark.parametrize("layout", ["tied", "untied", "bias"])
def test_sft_trainer_trains_the_new_rows_then_merge_and_save_keep_them(layout, tmp_path):
    tokenizer = llama3_style(reserved=2)
    tokenizer.pad_token = "<|end_of_text|>"
    expansion = ve.expand(make_model(layout, len(tokenizer)), tokenizer, WORDS, input_init="subword",
                          output_init="mean")
    expansion.save(tmp_path / "out")
    before = rows(expansion.model)

    # The README's lines, unchanged
    model = peft.get_peft_model(expansion.model, ve.lora_config(expansion, r=4))
    args = trl.SFTConfig(output_dir=str(tmp_path / "run"), max_steps=2, per_device_train_batch_size=2,
                         learning_rate=1e-2, report_to=[], save_strategy="no", use_cpu=True, seed=0)
    trainer = trl.SFTTrainer(model=model, args=args, train_dataset=datasets.Dataset.from_dict({"text": TEXTS}),
                             processing_class=expansion.tokenizer)
    trainer.train()
    assert trainer.state.global_step == 2

    merged = model.merge_and_unload()
    after = rows(merged)
    assert len(after) == len(before) == (1 if layout == "tied" else 2)
    old, new = slice(0, min(expansion.new_token_ids)), expansion.new_token_ids
    for was, now in zip(before, after):
        assert torch.equal(now[old], was[old])  # old rows bit-identical
        assert not torch.allclose(now[new], was[new])  # new rows trained, the head's too (TRL's fused loss)
    assert (merged.get_output_embeddings().weight is merged.get_input_embeddings().weight) == (layout == "tied")

    serving = ve.save_model(merged, expansion.tokenizer, tmp_path / "merged", tmp_path / "out")
    assert serving["vllm"]["ok"] and serving["tokenizer"]["autotokenizer_exact"]
    loaded = AutoTokenizer.from_pretrained(tmp_path / "merged")
    assert [loaded(f" {w}", add_special_tokens=False)["input_ids"] for w in WORDS] == [[i] for i in new]
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    torch.testing.assert_close(reloaded.get_input_embeddings().weight, after[0], rtol=0, atol=0)


@pytest.mark.parametrize("layout", ["tied", "bias"])
def test_the_wrapped_head_answers_bias_as_the_head_it_wraps(layout):
    """What TRL's fused loss reads: the head's own bias (a Parameter on Phi, None on Llama), and merged rows."""
    tokenizer = llama3_style(reserved=2)
    expansion = ve.expand(make_model(layout, len(tokenizer)), tokenizer, WORDS, input_init="subword",
                          output_init="mean")
    bias = expansion.model.get_output_embeddings().bias
    model = peft.get_peft_model(expansion.model, ve.lora_config(expansion, r=2))
    head = model.get_output_embeddings()
    assert type(head).__name__ == "TrainableTokensWrapper"
    assert head.bias is bias and (bias is None) == (layout == "tied")
    assert head.weight.shape[0] == len(expansion.tokenizer)
    with pytest.raises(AttributeError):
        head.no_such_attribute  # everything else is as PEFT has it
