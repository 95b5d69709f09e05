"""On the bundled SmolLM2 and its negative-logit twin: the collapse of zero/random rows, and the safety of mean rows."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from vocab_expand.diagnostics import diagnose

pytestmark = pytest.mark.slow
WORDS = ["saith", "Jehoshaphat", "tabernacle", "Nebuchadnezzar", "Behold", "iniquity"]
PROMPT = ["And it came to pass, when the king"]


@pytest.fixture(scope="module")
def twin(smollm2, kjv):
    from vocab_expand.twin import negative_logit_twin

    model, tok = smollm2
    return negative_logit_twin(model, tok, kjv, margin=20.0)


def test_twin_same_distribution_all_logits_below_minus_20(smollm2, twin, kjv, tmp_path):
    model, tok = smollm2
    batch = tok(kjv.heldout[:12], return_tensors="pt", padding=True)
    mask = batch["attention_mask"].bool()
    with torch.inference_mode():
        a, b = model(**batch).logits[mask], twin(**batch).logits[mask]
    assert b.max() < -20 and a.max() > 0
    assert (torch.log_softmax(a, -1) - torch.log_softmax(b, -1)).abs().max() < 2e-3
    twin.save_pretrained(tmp_path / "twin")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "twin")
    with torch.inference_mode():
        assert torch.allclose(loaded(**batch).logits[mask], b)


def test_collapse_on_the_twin_and_not_on_the_model(smollm2, twin, kjv):
    model, tok = smollm2
    options = dict(max_tokens=1200, progress=False, prompts=PROMPT, max_new_tokens=8)
    on_twin = diagnose(twin, tok, WORDS, kjv, ["zeros", "random", "mean"], label="twin", **options)
    on_model = diagnose(model, tok, WORDS, kjv, ["zeros", "mean"], label="model", **options)
    for name in ("zeros", "random"):
        row = on_twin.strategies[name]
        assert row["moved_probability"]["mean"] > 0.99 and row["new_token_argmax_share"] > 0.99
        assert row["generations"][0]["greedy_new_token_share"] == 1.0  # generates only new words
        assert "BROKEN" in row["verdict"]
    for diagnosis in (on_twin, on_model):
        mean = diagnosis.strategies["mean"]
        assert mean["within_bound"] and "SAFE" in mean["verdict"]
        assert mean["generations"][0]["greedy_new_token_share"] < 0.5
        assert abs(mean["bpc_change_percent"]) < 5
    assert on_model.strategies["zeros"]["moved_probability"]["mean"] < 0.05  # normal logits: zeros are harmless
    assert on_twin.figures["risk"]["predicted_kl_zero_rows"]["mean"] > 100  # and the risk report saw it coming
    assert on_model.figures["risk"]["predicted_kl_zero_rows"]["mean"] < 0.05
