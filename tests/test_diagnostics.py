"""diagnose: hand-computable figures, the closed forms against brute force, the twin, and bad input."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from vocab_expand import Corpus, expand
from vocab_expand.diagnostics import StrategyPair, diagnose, parse_strategies
from vocab_expand.tokenization import start_token_id
from vocab_expand.metrics import full_softmax_kl
from vocab_expand.twin import negative_logit_twin

from helpers import TINY_TEXT, make_model

WORDS = ["Jehoshaphat", "prophets"]
DOCS = [t for t in TINY_TEXT if "Jehoshaphat" in t or "prophets" in t] + ["The quick brown fox jumps over the lazy dog."]
CORPUS = Corpus("tiny", train=TINY_TEXT, heldout=DOCS)


def constant_logit_model(n: int, logit: float = -30.0) -> LlamaForCausalLM:
    """Every layer zeroed, every embedding row (1,1,1,1), head rows (logit,0,0,0): every logit equals ``logit``.

    With zero layers the final state is RMSNorm((1,1,1,1)) = (1,1,1,1), so each logit is its head row's first entry.
    """
    config = LlamaConfig(vocab_size=n, hidden_size=4, intermediate_size=4, num_hidden_layers=1, num_attention_heads=1,
                         num_key_value_heads=1, tie_word_embeddings=False, rms_norm_eps=0.0, eos_token_id=0)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "layers" in name and "norm" not in name:
                p.zero_()
        model.get_input_embeddings().weight.fill_(1.0)
        head = model.get_output_embeddings().weight
        head.zero_()
        head[:, 0] = logit
    return model


def test_hand_computed_figures(tiny_tokenizer):
    n = len(tiny_tokenizer)
    model = constant_logit_model(n, -30.0)
    d = diagnose(model, tiny_tokenizer, WORDS, CORPUS, ["zeros", "mean"], progress=False, generate=False)
    f = d.figures
    k = f["k"]
    assert k == 2 and f["n"] == n
    assert f["hewitt_bound_nats"] == pytest.approx(math.log1p(k / n))
    assert f["risk"]["log_z"]["mean"] == pytest.approx(-30 + math.log(n), abs=1e-4)
    assert f["risk"]["predicted_kl_zero_rows"]["max"] == pytest.approx(math.log1p(k * math.exp(30) / n), rel=1e-5)
    zeros, mean = f["strategies"]["zeros"], f["strategies"]["mean"]
    assert zeros["kl"]["mean"] == pytest.approx(math.log1p(k * math.exp(30) / n), rel=1e-5)
    assert zeros["new_token_argmax_share"] == 1.0
    assert zeros["moved_probability"]["mean"] == pytest.approx(1.0)
    assert mean["kl"]["max"] == pytest.approx(math.log1p(k / n), rel=1e-4)  # equality case of the bound
    assert mean["moved_probability"]["mean"] == pytest.approx(k / (n + k), rel=1e-4)
    assert mean["new_token_argmax_share"] == 0.0
    # Every token has probability 1/n before and 1/(n+k) after (mean rows give the same logit to all).
    assert f["bpc_before"] == pytest.approx(f["tokens_before"] * math.log2(n) / f["characters"], rel=1e-5)
    assert mean["bpc_after"] == pytest.approx(f["tokens_after"] * math.log2(n + k) / f["characters"], rel=1e-5)
    assert f["tokens_after"] < f["tokens_before"]
    # Adoption: a zero output row's logit 0 beats every old logit (-30); a mean row ties the first piece, never
    # beats it. (Zero input rows would make this toy's RMSNorm divide 0 by 0, so the inputs are mean rows.)
    d = diagnose(model, tiny_tokenizer, WORDS, CORPUS, ["mean/zeros"], progress=False, generate=False)
    assert d.strategies["mean/zeros"]["adoption"] == 1.0
    assert set(d.strategies["mean/zeros"]["adoption_per_word"].values()) == {1.0}
    assert mean["adoption"] == 0.0 and set(mean["adoption_per_word"].values()) == {0.0}


@pytest.mark.parametrize("layout", ["tied", "bias"])
def test_shortcuts_equal_brute_force(tiny_tokenizer, layout):
    """KL and bits per character from the shared pass equal full softmaxes of full expanded models."""
    model = make_model(layout, len(tiny_tokenizer), seed=3)
    pairs = ["random", "subword/mean", "mean_cov"]
    diagnosis = diagnose(model, tiny_tokenizer, WORDS, CORPUS, pairs, progress=False, generate=False)
    n = len(tiny_tokenizer)
    start = start_token_id(tiny_tokenizer)
    for spec in pairs:
        pair = StrategyPair.parse(spec)
        result = expand(model, tiny_tokenizer, WORDS, input_init=pair.input, output_init=pair.output)
        kls, nll = [], 0.0
        for doc in DOCS:
            old_ids = tiny_tokenizer(doc, add_special_tokens=False)["input_ids"]
            new_ids = result.tokenizer(doc, add_special_tokens=False)["input_ids"]
            first = next((i for i, (a, b) in enumerate(zip(old_ids, new_ids)) if a != b), len(old_ids) - 1)
            with torch.no_grad():
                old_logits = model(torch.tensor([[start] + old_ids])).logits[0]
                new_logits = result.model(torch.tensor([[start] + old_ids])).logits[0]
                kls.append(full_softmax_kl(old_logits[: first + 1], new_logits[: first + 1, : n + 2]))
                logp = torch.log_softmax(result.model(torch.tensor([[start] + new_ids])).logits[0].double(), -1)
                nll -= logp[torch.arange(len(new_ids)), torch.tensor(new_ids)].sum().item()
        brute = torch.cat(kls)
        row = diagnosis.strategies[pair.name]
        assert row["kl"]["mean"] == pytest.approx(brute.mean().item(), rel=1e-4, abs=1e-7)
        assert row["kl"]["max"] == pytest.approx(brute.max().item(), rel=1e-4, abs=1e-7)
        chars = sum(map(len, DOCS))
        assert row["bpc_after"] == pytest.approx(nll / math.log(2) / chars, rel=1e-5)


@pytest.mark.parametrize("layout", ["tied", "untied"])
def test_twin_has_the_same_distribution_and_negative_logits(layout, tiny_tokenizer):
    model = make_model(layout, len(tiny_tokenizer), seed=1)
    with torch.no_grad():  # a shared direction in the final states, as real models have
        model.model.norm.weight.add_(3.0)
        model.get_input_embeddings().weight.add_(0.5)
    before = {name: p.clone() for name, p in model.state_dict().items()}
    twin = negative_logit_twin(model, tiny_tokenizer, CORPUS, margin=20.0)
    # the twin shares every weight but its head: no copy of the body
    twin_params = dict(twin.named_parameters())
    for name, p in model.named_parameters():
        assert (twin_params[name] is p) == (name != "lm_head.weight"), name
    assert all(torch.equal(p, before[name]) for name, p in model.state_dict().items())  # original intact
    ids = tiny_tokenizer(DOCS, return_tensors="pt", padding=True)
    with torch.no_grad():
        a, b = model(**ids).logits, twin(**ids).logits
    mask = ids["attention_mask"].bool()
    assert b[mask].max() < -20
    assert (torch.log_softmax(a, -1) - torch.log_softmax(b, -1))[mask].abs().max() < 1e-3
    assert twin.get_output_embeddings().weight.data_ptr() != twin.get_input_embeddings().weight.data_ptr()
    assert twin.get_input_embeddings().weight is model.get_input_embeddings().weight


def test_bad_input(tiny_tokenizer):
    model = make_model("tied", len(tiny_tokenizer))
    with pytest.raises(ValueError, match="unknown strategy 'nope'.*choose from"):
        diagnose(model, tiny_tokenizer, WORDS, CORPUS, ["nope"])
    with pytest.raises(ValueError, match="NAME or INPUT/OUTPUT"):
        parse_strategies("a/b/c")
    with pytest.raises(ValueError, match="no strategies"):
        parse_strategies(" , ")
    with pytest.raises(ValueError, match="no held-out documents"):
        diagnose(model, tiny_tokenizer, WORDS, Corpus("c", ["a b"], []), ["mean"])
    with pytest.raises(ValueError, match="has no documents"):
        Corpus("empty", [], [])
    with pytest.raises(ValueError, match="nothing to diagnose"):
        diagnose(model, tiny_tokenizer, ["the"], CORPUS, ["mean"], progress=False, generate=False)
    assert [p.name for p in parse_strategies("zeros, subword/mean,zeros")] == ["zeros", "subword/mean"]


def test_words_beyond_the_first_tokens_are_sampled_and_weighted(tiny_tokenizer):
    """Issue 16, item 9: the word occurs only late in the held-out split, beyond max_tokens."""
    filler = [f"The quick brown fox jumps over the lazy dog number {i}." for i in range(60)]
    corpus = Corpus("late", train=TINY_TEXT, heldout=filler + [DOCS[0]])
    model = make_model("tied", len(tiny_tokenizer))
    d = diagnose(model, tiny_tokenizer, ["Jehoshaphat"], corpus, ["mean"], max_tokens=150, progress=False,
                 generate=False)
    f = d.figures
    assert f["sample"]["documents_with_words"] == 1 and f["sample"]["weighted"]
    assert f["words_absent_from_heldout"] == [] and "bpc_after" in f["strategies"]["mean"]
    assert f["documents"] < len(corpus.heldout)


def test_held_out_sample_weights_are_unbiased(tiny_tokenizer):
    from vocab_expand.diagnostics import addable_plan, weighted_heldout_sample

    filler = [f"The quick brown fox jumps over the lazy dog number {i}." * (1 + i % 3) for i in range(80)]
    corpus = Corpus("c", train=TINY_TEXT, heldout=filler + DOCS * 5)
    plan = addable_plan(tiny_tokenizer, ["Jehoshaphat"], {})
    total = sum(map(len, corpus.heldout))
    estimates = []
    for seed in range(200):
        sample = weighted_heldout_sample(corpus, tiny_tokenizer, plan, 600, seed)
        estimates.append(sum(w * len(doc) for w, doc in zip(sample.weights.tolist(), sample.docs)))
        assert sample.documents_with_words == sample.heldout_documents_with_words  # under the cap: all of them
    assert sum(estimates) / len(estimates) == pytest.approx(total, rel=0.03)


def test_words_absent_from_the_held_out_split_are_listed(tiny_tokenizer):
    """Issue 16, item 9: figures that need no occurrence are reported; bits per character is left out."""
    model = make_model("tied", len(tiny_tokenizer))
    d = diagnose(model, tiny_tokenizer, ["Zerubbabel"], CORPUS, ["mean"], progress=False, generate=False)
    assert d.figures["words_absent_from_heldout"] == ["Zerubbabel"] and "not measured" in d.figures["bpc_note"]
    row = d.strategies["mean"]
    assert row["kl"]["max"] <= row["hewitt_bound_nats"] + 1e-6 and "bpc_after" not in row
    assert "SAFE" in row["verdict"]


def test_batched_generations_are_each_prompts_own(tiny_tokenizer):
    """The prompts run as one left-padded batch; greedy continuations are those of each prompt alone."""
    from vocab_expand.generation import generations

    model = make_model("tied", len(tiny_tokenizer), seed=2)
    prompts = ["And Jehoshaphat said", "In the beginning God created the heaven", "Then"]
    settings = (tiny_tokenizer.padding_side, tiny_tokenizer.pad_token)
    together = generations(model, tiny_tokenizer, prompts, 8, 0, new_ids={5})
    alone = [generations(model, tiny_tokenizer, [p], 8, 0, new_ids={5})[0] for p in prompts]
    assert [r["greedy"] for r in together] == [r["greedy"] for r in alone]
    assert all(r["greedy"] and "greedy_new_token_share" in r for r in together)
    assert (tiny_tokenizer.padding_side, tiny_tokenizer.pad_token) == settings  # the tokenizer left as it was


def test_generations_name_the_new_tokens_they_wrote(tiny_tokenizer):
    """greedy_new_tokens lists the new tokens of the continuation, decoded, in order; their count matches the share."""
    from vocab_expand.generation import generations

    model = make_model("bias", len(tiny_tokenizer), seed=2)
    with torch.no_grad():  # token 5 is the greedy choice everywhere
        model.lm_head.bias[5] = 1e4
    row = generations(model, tiny_tokenizer, ["And Jehoshaphat said"], 6, 0, new_ids={5})[0]
    written = row["greedy_new_tokens"]
    assert written and set(written) == {tiny_tokenizer.decode([5])}
    assert row["greedy_new_token_share"] == pytest.approx(len(written) / 6)


def test_word_prompts_stop_just_before_a_whole_word():
    from vocab_expand.generation import word_prompts

    documents = ["And Jehoshaphat the king", "Then came Jehoshaphatite men", "So Nebuchadnezzar, and then came Jehoshaphat.",
                 "x " * 60 + "and so went Nebuchadnezzar"]
    # Jehoshaphat: not after one word only, nor inside "Jehoshaphatite"; Nebuchadnezzar: its second document
    found = word_prompts(documents, ["Jehoshaphat", "Missing", "Nebuchadnezzar"])
    (first, word), (second, other) = found.items()
    assert (first, word, other) == ("So Nebuchadnezzar, and then came", "Jehoshaphat", "Nebuchadnezzar")
    assert second.endswith("x and so went") and len(second) <= 80 and not second.startswith(" ")
    long = word_prompts(documents[3:], ["Nebuchadnezzar"], context_chars=20)
    assert list(long) == ["x x x x and so went"]
    assert word_prompts(documents, ["Jehoshaphat", "Nebuchadnezzar"], count=1) == {"So Nebuchadnezzar, and then came": "Jehoshaphat"}
