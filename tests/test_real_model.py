"""The bundled SmolLM2-135M: only a real model and a real corpus prove these points."""

from __future__ import annotations

import re
import sysconfig
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from vocab_expand import expand, hewitt_bound, mine
from vocab_expand.metrics import added_token_kl, log_partition
from vocab_expand.rows.layout import embedding_layout

from tokenizer_checks import assert_coarsening

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def expanded(smollm2, kjv):
    model, tok = smollm2
    words = [c.word for c in mine(tok, kjv, top_k=100, forms="both", progress=False)]
    return expand(model, tok, words + ["Jehoshaphat", "Nebuchadnezzar"], forms="both")


def test_bundled_model_loads_as_expected(smollm2):
    model, tok = smollm2
    assert len(tok) == 49152 and embedding_layout(model).tied
    assert model.get_input_embeddings().weight.dtype == torch.float32


def test_invariants_on_the_real_model(smollm2, expanded):
    model, tok = smollm2
    new = expanded.model
    k = len(expanded.new_tokens)
    assert k >= 100 and "ĠJehoshaphat" in expanded.new_tokens
    old_w = model.get_input_embeddings().weight
    new_w = new.get_input_embeddings().weight
    assert new_w.shape == (49152 + k, old_w.shape[1])
    assert torch.equal(new_w[:49152], old_w)
    assert embedding_layout(new).tied and new.config.vocab_size == 49152 + k
    assert model.get_input_embeddings().weight.shape[0] == 49152  # the caller's model is untouched


def test_kjv_tokenization_coarsened_and_unchanged_without_the_words(smollm2, kjv, expanded):
    _, tok = smollm2
    pattern = re.compile("|".join(sorted({re.escape(w) for w in expanded.words}, key=len, reverse=True)))
    verses = kjv.train + kjv.heldout
    old = tok(verses, add_special_tokens=False)["input_ids"]
    new = expanded.tokenizer(verses, add_special_tokens=False)["input_ids"]
    without = [i for i, v in enumerate(verses) if not pattern.search(v)]
    assert len(without) > 5000
    assert all(old[i] == new[i] for i in without)
    assert sum(map(len, new)) < sum(map(len, old))
    new_ids = set(expanded.new_token_ids)
    for verse in kjv.heldout:
        assert_coarsening(tok, expanded.tokenizer, verse, new_ids)


def test_python_source_tokenizes_exactly_as_before(smollm2, expanded):
    _, tok = smollm2
    files = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))[:60]
    text = "".join(f.read_text(encoding="utf-8", errors="replace") for f in files)
    assert len(text) > 500_000
    chunks = [text[i : i + 20000] for i in range(0, len(text), 20000)]
    assert tok(chunks, add_special_tokens=False)["input_ids"] == expanded.tokenizer(chunks, add_special_tokens=False)["input_ids"]


def test_mean_rows_within_the_bound_on_real_text(smollm2, kjv):
    model, tok = smollm2
    result = expand(model, tok, ["Jehoshaphat", "Nebuchadnezzar", "Zerubbabel", "Melchizedek"], input_init="mean")
    batch = tok(kjv.heldout[:24], return_tensors="pt", padding=True)
    with torch.inference_mode():
        hidden = model.model(**batch).last_hidden_state[batch["attention_mask"].bool()]
        head = model.get_output_embeddings().weight
        rows = result.model.get_output_embeddings().weight[result.new_token_ids]
        kl = added_token_kl(log_partition(hidden @ head.T), hidden @ rows.T)
    assert kl.max() <= hewitt_bound(4, 49152) + 1e-6
    assert kl.mean() > 0


def test_saved_folder_generates_with_plain_transformers(smollm2, expanded, tmp_path):
    expanded.save(tmp_path / "out")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    tok = AutoTokenizer.from_pretrained(tmp_path / "out")
    assert tok.get_vocab() == expanded.tokenizer.get_vocab()
    ids = tok("And Jehoshaphat said unto the king of Israel,", return_tensors="pt")
    assert expanded.new_token_ids[0] <= max(ids["input_ids"][0].tolist())
    out = model.generate(**ids, max_new_tokens=12, do_sample=False, pad_token_id=tok.eos_token_id)
    text = tok.decode(out[0], skip_special_tokens=True)
    assert text.startswith("And Jehoshaphat said unto the king of Israel,") and len(text) > 50
    with torch.inference_mode():  # old-vocabulary logits on text without new tokens are unchanged
        plain = tok("In the beginning God created the heaven", return_tensors="pt")
        new_out = model(**plain, output_hidden_states=True)
        old_out = smollm2[0](**plain, output_hidden_states=True)
    # Exactly: the body reads the same rows, and the head's old rows are the old head.
    assert torch.equal(new_out.hidden_states[-1], old_out.hidden_states[-1])
    assert torch.equal(model.get_output_embeddings().weight[:49152], smollm2[0].get_output_embeddings().weight)
    # The logits come from a wider product, which BLAS may sum in another order: equal within the rounding bound of
    # a float32 dot product in any order, d * eps * (|h| @ |W|^T), and far closer in practice.
    hidden, head = old_out.hidden_states[-1], smollm2[0].get_output_embeddings().weight
    bound = hidden.shape[-1] * torch.finfo(torch.float32).eps / 2 * (hidden.abs() @ head.abs().T)
    gap = (new_out.logits[..., :49152] - old_out.logits).abs()
    assert (gap <= bound).all() and gap.max() < 1e-3


def test_fitted_rows_cost_nothing_in_bits_per_character(smollm2, kjv):
    """The point of distill/fit, provable only on a real model and real text: right after expansion, held-out
    bits per character are at or below the original model's, while mean rows (transformers' default) cost more."""
    from vocab_expand import diagnose

    model, tok = smollm2
    words = [c.word for c in mine(tok, kjv, top_k=30, progress=False)]
    found = diagnose(model, tok, words, kjv, ["mean", "distill/fit"], max_tokens=3000, generate=False,
                     progress=False, sample_max_positions=4096)  # measured: bpc 1.52178 against 1.52464, 75 s
    mean, fitted = found.strategies["mean"], found.strategies["distill/fit"]
    assert mean["bpc_change_percent"] > 0.5
    assert fitted["bpc_after"] <= found.figures["bpc_before"]
    assert fitted["tied"] and fitted["output_strategy"] == "joint"  # SmolLM2 is tied: auto keeps it tied
    path = fitted["data_driven"]["joint"]["input_weight_path"]  # the distilled row alone is a poor output row
    assert min(p["calibration_nats"] for p in path) < path[0]["calibration_nats"]
    assert "FITTED" in fitted["verdict"] and fitted["moved_probability"]["mean"] < 0.05
