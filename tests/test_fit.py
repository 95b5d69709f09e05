"""fit and distill: the optimum against brute force, old rows untouched, the limits, determinism, sampling,
the inputs_embeds path against a real expanded model, and the errors users meet."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import TINY_TEXT, make_model
from transformers import Gemma3ForCausalLM, Gemma3TextConfig

from vocab_expand import Corpus, expand, plan_tokens
from vocab_expand.config import ExpandConfig
from vocab_expand.learning.windows import windows_in
from vocab_expand.strategies.distill import DistillOptions, contexts_per_word
from vocab_expand.strategies.distill.maths import Distiller
from vocab_expand.rows.compute import new_rows
from vocab_expand.strategies.fit.solve import FitData, objective, solve_rows, thinned
from vocab_expand.forward import run_pass
from vocab_expand.learning.sampling import (
    AUTO_MAX_POSITIONS,
    AUTO_MIN_POSITIONS,
    Occurrences,
    anchor_probabilities,
    auto_budget,
    sample_domain,
)
from vocab_expand.tokenization import start_token_id

WORDS = ["Jehoshaphat", "prophets", "Tokyo"]
# Enough text that every word occurs in fitting and calibration chunks.
TRAIN = [t for t in TINY_TEXT for _ in range(12)] + [
    f"And Jehoshaphat sent {i} of the prophets unto the king of Israel." for i in range(40)]
CORPUS = Corpus("tiny", train=TRAIN, heldout=TINY_TEXT[:2])
FAST = dict(sample_max_positions=4000, distill_epochs=2, calibration_fraction=0.25)


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
    untie = {"tie_policy": "untie"} if layout == "tied" else {}  # auto keeps a tied model tied (joint)
    result = expand(model, tiny_tokenizer, WORDS, corpus=CORPUS, **untie, **FAST)
    assert (result.report["input_strategy"], result.report["output_strategy"]) == ("distill", "fit")
    assert not result.report["tied"]
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
    tokens_before, pieces = 100, [[7, 8, 9], [5]]
    found = windows_in([1, 2, 100, 3, 4, 101, 6], pieces, tokens_before, start_id=0, context=1, after=5, calibration=False)
    first, second = found
    assert (first.prefix, first.student, first.teacher) == ([0, 2], [100, 3, 4], [7, 8, 9, 3, 4])
    assert [first.teacher[p] for p in first.teacher_positions] == [9, 3, 4]
    assert [first.student[p] for p in first.student_positions] == [100, 3, 4]
    assert (second.prefix, second.student, second.teacher) == ([0, 4], [101, 6], [5, 6])  # stops at new tokens


def test_distillation_window_cap_lowers_contexts_per_word_but_not_below_min_occurrences(tiny_tokenizer):
    capped = DistillOptions(max_windows=4096)
    assert [contexts_per_word(k, capped, 2) for k in (100, 1000, 5000)] == [8, 4, 2]
    assert [contexts_per_word(k, DistillOptions(), 2) for k in (1000, 2000)] == [8, 4]  # the default cap
    assert contexts_per_word(10**6, DistillOptions(max_windows=None), 2) == 8
    assert contexts_per_word(5000, capped, 3) == 3
    assert ExpandConfig(distill_max_windows=None).distill_max_windows is None  # None means "no cap", kept
    model = make_model("untied", len(tiny_tokenizer))
    plan = plan_tokens(tiny_tokenizer, WORDS, ExpandConfig())
    counts = {}
    for cap in (None, 6):
        config = ExpandConfig(input_init="distill", output_init="mean", distill_max_windows=cap, **FAST)
        report = new_rows(model, plan, config, CORPUS).details["distill"]
        counts[cap] = (report["contexts_per_word"], report["windows"])
    assert counts[None][0] == 8 and counts[6][0] == 2
    # 2 fitting and 1 calibration window per word under the cap; more without it
    assert counts[6][1] <= 3 * len(WORDS) < counts[None][1]


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


def _occurrences(spec: list[list[tuple[int, int]]], lengths: list[int]) -> Occurrences:
    """Occurrences from, per chunk, a list of (position, word)."""
    flat = [(c, p, w) for c, found in enumerate(spec) for p, w in found]
    chunk, pos, word = (np.array([f[i] for f in flat], dtype=np.int64) for i in range(3))
    return Occurrences(np.array(lengths), np.arange(len(lengths)), chunk, pos, word)


def test_anchor_probabilities_keep_the_budget_and_favour_rare_words():
    occ = _occurrences([[(5, 0)]] * 90 + [[(9, 1)]] * 10 + [[]] * 100, [10] * 200)
    counts = np.array([90, 10])
    pi, rate = anchor_probabilities(occ, counts, wanted=5.0, budget=400)
    assert occ.expected_cost(pi, rate) == pytest.approx(400)  # the budget, spent exactly in expectation
    assert occ.expected_cost(pi, 0.0) == pytest.approx(0.75 * 400)  # the anchors' share
    assert pi[1] >= 0.5 - 1e-9 and pi[1] > pi[0]  # the rare word is expected 5 times, and more than its share
    assert 0 < rate < 1
    tight, _ = anchor_probabilities(occ, counts, wanted=5.0, budget=40)  # even the quota does not fit: shrunk
    assert tight[1] == pytest.approx(tight[0] * 9) and occ.expected_cost(tight, 0.0) == pytest.approx(30)


def test_expected_cost_matches_simulation():
    rng = np.random.default_rng(0)
    spec = [sorted({(int(p), int(rng.integers(3))) for p in rng.integers(0, 12, size=rng.integers(0, 4))},
                   key=lambda x: x[0]) for _ in range(40)]
    spec = [list({p: (p, w) for p, w in found}.values()) for found in spec]  # one token per position
    occ = _occurrences(spec, [12] * 40)
    pi, rate = np.array([0.2, 0.5, 0.9]), 0.1
    total = 0.0
    for _ in range(4000):
        drawn = rng.random(len(occ.word)) < pi[occ.word]
        cut = np.zeros(40)
        np.maximum.at(cut, occ.chunk[drawn], occ.pos[drawn] + 1)
        cut[rng.random(40) < rate] = 12
        total += cut.sum()
    assert total / 4000 == pytest.approx(occ.expected_cost(pi, rate), rel=0.02)


def test_sample_weights_are_unbiased(tiny_tokenizer):
    plan = plan_tokens(tiny_tokenizer, WORDS, ExpandConfig())
    n = len(tiny_tokenizer)
    docs = plan.tokenizer(TRAIN, add_special_tokens=False)["input_ids"]
    total = sum(map(len, docs))
    counts = torch.bincount(torch.tensor([t - n for d in docs for t in d if t >= n]), minlength=len(WORDS))
    estimates, per_word = [], []
    for seed in range(30):
        sample = sample_domain(plan.tokenizer, TRAIN, n, len(WORDS), max_positions=800, min_sampled_occurrences=4,
                               calibration_fraction=0.2, seed=seed, tail=3, progress=False)
        flat, _ = sample.flat_weights()
        ids = torch.tensor([t for chunk in sample.ids for t in chunk])
        estimates.append(flat.sum().item())
        per_word.append(torch.zeros(len(WORDS)).index_add_(0, (ids[ids >= n] - n), flat[ids >= n]))
        assert sample.positions() < 3 * 800 and sample.positions() < total
    # Post-stratified: in every seed the totals are exact, short only by the occurrences of a word that
    # one part (fitting or calibration) did not draw at all, which no weight can stand for.
    assert estimates == pytest.approx([total] * 30, rel=1e-3)
    exact = torch.isclose(torch.stack(per_word), counts.float().expand(30, -1), rtol=1e-5)
    assert exact.float().mean() > 0.9
    assert torch.allclose(torch.stack(per_word).mean(0), counts.float(), rtol=0.05)
    # every word is drawn: the rare one ("Tokyo", 12 occurrences) is over-sampled and weighted down
    assert (sample.occurrences() + sample.occurrences(calibration=True) > 0).all()


def test_auto_budget_grows_with_the_words_to_fit():
    occ = _occurrences([[(i % 10, i % 500)] for i in range(20_000)], [40] * 20_000)
    small = auto_budget(occ, np.bincount(occ.word[occ.word < 5], minlength=500), wanted=10)
    large = auto_budget(occ, np.bincount(occ.word, minlength=500), wanted=10)
    assert small == AUTO_MIN_POSITIONS and AUTO_MIN_POSITIONS < large <= AUTO_MAX_POSITIONS


def test_clear_errors(tiny_tokenizer):
    model = make_model("tied", len(tiny_tokenizer))
    with pytest.raises(ValueError, match="corpus=") as error:
        expand(make_model("untied", len(tiny_tokenizer)), tiny_tokenizer, WORDS, input_init="subword", output_init="fit")
    assert "subword/mean" in str(error.value) and str(error.value).startswith("fit learns rows")
    with pytest.raises(ValueError, match="so subword/fit cannot run as named"):  # the pair the user named
        expand(model, tiny_tokenizer, WORDS, input_init="subword", output_init="fit")
    with pytest.raises(ValueError, match="output rows only"):
        expand(model, tiny_tokenizer, WORDS, input_init="fit", output_init="fit", corpus=CORPUS)
    with pytest.raises(ValueError, match="tie_policy"):
        expand(model, tiny_tokenizer, WORDS, input_init="distill", output_init="mean", tie_policy="input", corpus=CORPUS)
    with pytest.raises(ValueError, match="none of the new words occurs"):
        expand(model, tiny_tokenizer, WORDS, corpus=Corpus("x", train=["nothing here"] * 5, heldout=[]))
    with pytest.raises(ValueError, match="calibration_fraction"):
        ExpandConfig(calibration_fraction=1.5)


def test_thinning_keeps_new_targets_and_stays_unbiased():
    g = torch.Generator().manual_seed(0)
    p = 5000
    target = torch.where(torch.rand(p, generator=g) < 0.05, 0, -1)
    data = FitData(torch.randn(p, 3, generator=g), torch.zeros(p), target, torch.zeros(p), torch.rand(p, generator=g) + 0.5)
    part = torch.rand(p, generator=g) < 0.2
    totals = []
    for seed in range(40):
        thin, thin_part = thinned(data, part, 1000, seed)
        assert thin.hidden.shape[0] < 1400 and len(thin_part) == thin.hidden.shape[0]
        assert torch.equal(thin.weight[thin.target >= 0], data.weight[data.target >= 0])  # all kept, same weight
        totals.append(thin.weight.sum().item())
    assert np.mean(totals) == pytest.approx(data.weight.sum().item(), rel=0.02)
    assert thinned(data, part, 10_000, 0)[0] is data
