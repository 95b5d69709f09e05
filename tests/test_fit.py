"""fit and distill: the optimum against brute force, old rows untouched, the limits, determinism, sampling,
the inputs_embeds path against a real expanded model, and the errors users meet."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import Gemma3ForCausalLM, Gemma3TextConfig

from vocab_expand import Corpus, expand, plan_tokens
from vocab_expand.config import ExpandConfig
from vocab_expand.distill import Distiller, windows_in
from vocab_expand.expansion import new_rows
from vocab_expand.fitting import FitData, objective, solve_rows
from vocab_expand.forward import run_pass
from vocab_expand.sampling import inclusion_probabilities, sample_domain
from vocab_expand.tokenization import start_token_id

from conftest import TINY_TEXT, make_model

WORDS = ["Jehoshaphat", "prophets", "Tokyo"]
# Enough text that every word occurs in fitting and calibration chunks.
TRAIN = [t for t in TINY_TEXT for _ in range(12)] + [
    f"And Jehoshaphat sent {i} of the prophets unto the king of Israel." for i in range(40)]
CORPUS = Corpus("tiny", train=TRAIN, heldout=TINY_TEXT[:2])
FAST = dict(fit_max_positions=4000, distill_epochs=2, calibration_fraction=0.25)


def random_problem(seed: int = 0, positions: int = 300, k: int = 3, d: int = 5) -> FitData:
    g = torch.Generator().manual_seed(seed)
    target = torch.randint(-1, k, (positions,), generator=g)
    return FitData(hidden=torch.randn(positions, d, generator=g) * 2, log_z=torch.randn(positions, generator=g) + 3,
                   target=target, target_logit=torch.randn(positions, generator=g),
                   weight=torch.rand(positions, generator=g) + 0.5)


@pytest.mark.parametrize("cap", [None, 30.0])
def test_fit_reaches_the_brute_force_optimum(cap):
    data, mean = random_problem(), torch.randn(1, 5).expand(3, 5).clone()
    fitted = solve_rows(data, mean.clone(), mean, 1e-2, cap=cap)
    brute = mean.clone().requires_grad_(True)
    optimizer = torch.optim.Adam([brute], lr=0.05)
    for step in range(4000):
        if step == 3000:
            optimizer.param_groups[0]["lr"] = 0.005
        optimizer.zero_grad()
        objective(brute, data, mean, 1e-2, cap).backward()
        optimizer.step()
    with torch.no_grad():
        best, found = objective(brute, data, mean, 1e-2, cap).item(), objective(fitted, data, mean, 1e-2, cap).item()
    assert found <= best + 1e-5
    assert torch.allclose(fitted, brute.detach(), atol=2e-3)
    assert found < objective(mean, data, mean, 1e-2, cap).item() - 1e-3  # the fit did move


def test_fit_with_infinite_regularization_returns_the_mean():
    data, mean = random_problem(1), torch.randn(1, 5).expand(3, 5).clone()
    assert torch.allclose(solve_rows(data, mean + 1.0, mean, 1e9), mean, atol=1e-5)
    frozen = torch.tensor([True, False, True])
    partial = solve_rows(data, mean + 1.0, mean, 1e-3, free=frozen)
    assert torch.equal(partial[1], (mean + 1.0)[1]) and not torch.allclose(partial[0], (mean + 1.0)[0])


@pytest.mark.parametrize("layout", ["tied", "untied", "bias"])
def test_distill_fit_touches_only_new_rows_and_beats_the_mean_on_its_objective(layout, tiny_tokenizer):
    n = len(tiny_tokenizer)
    model = make_model(layout, n)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = expand(model, tiny_tokenizer, WORDS, corpus=CORPUS, **FAST)
    assert (result.report["input_strategy"], result.report["output_strategy"]) == ("distill", "fit")
    assert not result.report["tied"]  # auto unties a tied model for fit/distill
    new_state = result.model.state_dict()
    for key, old in before.items():
        assert torch.equal(new_state[key][: old.shape[0]], old), key  # old rows and every other weight untouched
    assert {k: torch.equal(v, before[k]) for k, v in model.state_dict().items()} == {k: True for k in before}
    fit = result.report["data_driven"]["fit"]
    assert fit["calibration_nll_fitted"] < fit["calibration_nll_start"]
    assert fit["reg"] in [p["reg"] for p in fit["reg_path"]]
    counts = result.report["data_driven"]["sample"]["occurrences_in_training_text"]
    assert counts == {"Jehoshaphat": 52, "prophets": 52, "Tokyo": 12}


def test_rarely_seen_words_keep_the_fallback_rows(tiny_tokenizer):
    model = make_model("untied", len(tiny_tokenizer))
    result = expand(model, tiny_tokenizer, WORDS, corpus=CORPUS, min_occurrences=1000, **FAST)
    details = result.report["data_driven"]
    assert details["fit"]["fallback_words"] == WORDS
    reference = expand(model, tiny_tokenizer, WORDS, input_init="subword", output_init="mean", tie_policy="untie")
    ids = result.new_token_ids
    assert torch.equal(result.model.lm_head.weight[ids], reference.model.lm_head.weight[ids])
    assert torch.equal(result.model.get_input_embeddings().weight[ids], reference.model.get_input_embeddings().weight[ids])


def test_distillation_lowers_its_error_and_only_moves_new_input_rows(tiny_tokenizer):
    model = make_model("untied", len(tiny_tokenizer))
    plan = plan_tokens(tiny_tokenizer, WORDS[:2], ExpandConfig())
    config = ExpandConfig(input_init="distill", output_init="mean", distill_epochs=6, **{k: v for k, v in FAST.items() if k != "distill_epochs"})
    rows = new_rows(model, plan, config, CORPUS)
    start = new_rows(model, plan, ExpandConfig(input_init="subword", output_init="mean", tie_policy="untie"))
    history = rows.details["distill"]["history"]
    assert history[rows.details["distill"]["best_epoch"]]["calibration_error"] < history[0]["calibration_error"]
    assert not torch.allclose(rows.input, start.input)
    assert torch.equal(rows.output, start.output)  # mean output rows: distillation never touches the head


def test_distillation_windows_match_the_last_piece_and_following_tokens():
    n_old, pieces = 100, [[7, 8, 9], [5]]
    found = windows_in([1, 2, 100, 3, 4, 101, 6], pieces, n_old, start_id=0, context=1, after=5, calibration=False)
    first, second = found
    assert (first.prefix, first.student, first.teacher) == ([0, 2], [100, 3, 4], [7, 8, 9, 3, 4])
    assert [first.teacher[p] for p in first.teacher_positions] == [9, 3, 4]
    assert [first.student[p] for p in first.student_positions] == [100, 3, 4]
    assert (second.prefix, second.student, second.teacher) == ([0, 4], [101, 6], [5, 6])  # stops at new tokens


@pytest.mark.parametrize("pair", ["distill/fit", "subword/fit"])
def test_same_seed_same_rows(pair, tiny_tokenizer):
    model = make_model("untied", len(tiny_tokenizer))
    inp, out = pair.split("/")
    runs = [expand(model, tiny_tokenizer, WORDS, input_init=inp, output_init=out, corpus=CORPUS, seed=3, **FAST)
            for _ in range(2)]
    for a, b in zip(runs[0].model.state_dict().values(), runs[1].model.state_dict().values()):
        assert torch.equal(a, b)


def gemma_model(n: int) -> Gemma3ForCausalLM:
    torch.manual_seed(0)
    config = Gemma3TextConfig(vocab_size=n, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                              num_attention_heads=2, num_key_value_heads=1, head_dim=8, max_position_embeddings=128,
                              sliding_window=16, pad_token_id=1, eos_token_id=0, bos_token_id=0)
    return Gemma3ForCausalLM(config).eval()


@pytest.mark.parametrize("kind", ["llama", "gemma3"])
def test_new_input_rows_as_embeds_equal_the_expanded_model(kind, tiny_tokenizer):
    """fit and distill feed new rows as inputs_embeds (with Gemma's sqrt(d) scale); the expanded model must agree."""
    n = len(tiny_tokenizer)
    model = gemma_model(n) if kind == "gemma3" else make_model("untied", n)
    result = expand(model, tiny_tokenizer, WORDS[:2], input_init="random", output_init="mean", tie_policy="untie")
    ids = result.tokenizer(TINY_TEXT[:2], add_special_tokens=False)["input_ids"]
    assert any(t >= n for seq in ids for t in seq)
    rows = result.model.get_input_embeddings().weight[n:].detach()
    ours = run_pass(model, ids, n, start_token_id(tiny_tokenizer), input_rows=rows)
    theirs = run_pass(result.model, ids, n, start_token_id(tiny_tokenizer))
    assert torch.allclose(ours.hidden, theirs.hidden, atol=1e-5)
    assert torch.allclose(ours.log_z, theirs.log_z, atol=1e-5)


@pytest.mark.parametrize("kind", ["llama", "gemma3"])
def test_cached_prefix_gives_the_states_of_a_full_pass(kind, tiny_tokenizer):
    """The distiller reads prefixes once (left-padded, explicit positions); its teacher states must equal those of
    plain full passes over [prefix, pieces, next tokens]."""
    n = len(tiny_tokenizer)
    model = gemma_model(n) if kind == "gemma3" else make_model("untied", n)
    pieces = [[40, 41, 42]]
    windows = [w for chunk in ([5, 6, 7, n, 8, 9], [n, 10], [11, 12, 13, 14, 15, 16, n])
               for w in windows_in(chunk, pieces, n, 0, context=4, after=2, calibration=False)]
    distiller = Distiller(model, windows, n)
    for batch, target in zip(distiller.batches, distiller.targets):
        last = target[-1]
        row = 0
        for w in batch.windows:
            with torch.no_grad():
                full = model.base_model(input_ids=torch.tensor([w.prefix + w.teacher])).last_hidden_state[0]
            expected = full[[len(w.prefix) + p for p in w.teacher_positions]]
            assert torch.allclose(last[row : row + len(expected)], expected, atol=1e-5)
            row += len(expected)


def test_inclusion_probabilities_keep_the_budget_and_favour_rare_words():
    lengths = np.array([10.0] * 100 + [10.0] * 100)
    holds = [np.array([0])] * 90 + [np.array([1])] * 10 + [np.array([], dtype=np.int64)] * 100
    counts = np.array([90, 10])
    pi = inclusion_probabilities(lengths, holds, counts, wanted=5.0, max_positions=400)
    assert abs((lengths * pi).sum() - 400) < 1e-6  # the budget, spent exactly in expectation
    assert pi[95] >= 0.5 - 1e-9 and pi[95] > pi[0]  # the rare word is expected 5 times
    assert (pi[:100] * lengths[:100]).sum() == pytest.approx(0.75 * 400)


def test_sample_weights_are_unbiased(tiny_tokenizer):
    plan = plan_tokens(tiny_tokenizer, WORDS, ExpandConfig())
    n = len(tiny_tokenizer)
    total = sum(len(ids) for ids in plan.tokenizer(TRAIN, add_special_tokens=False)["input_ids"])
    estimates = []
    for seed in range(30):
        sample = sample_domain(plan.tokenizer, TRAIN, n, len(WORDS), max_positions=1500, min_sampled_occurrences=4,
                               calibration_fraction=0.2, seed=seed, progress=False)
        estimates.append(sum(w * len(c) for w, c in zip(sample.weight.tolist(), sample.ids)))
        assert sample.positions() < 3 * 1500
    assert np.mean(estimates) == pytest.approx(total, rel=0.1)


def test_clear_errors(tiny_tokenizer):
    model = make_model("tied", len(tiny_tokenizer))
    with pytest.raises(ValueError, match="corpus=") as error:
        expand(model, tiny_tokenizer, WORDS, input_init="subword", output_init="fit")
    assert "subword/mean" in str(error.value)
    with pytest.raises(ValueError, match="output rows only"):
        expand(model, tiny_tokenizer, WORDS, input_init="fit", output_init="fit", corpus=CORPUS)
    with pytest.raises(ValueError, match="tie_policy"):
        expand(model, tiny_tokenizer, WORDS, input_init="distill", output_init="mean", tie_policy="input", corpus=CORPUS)
    with pytest.raises(ValueError, match="none of the new words occurs"):
        expand(model, tiny_tokenizer, WORDS, corpus=Corpus("x", train=["nothing here"] * 5, heldout=[]))
    with pytest.raises(ValueError, match="calibration_fraction"):
        ExpandConfig(calibration_fraction=1.5)
