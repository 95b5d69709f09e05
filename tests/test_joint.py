"""`joint`, the shared row of a tied model: the model stays tied through expansion, save and reload and grows by
exactly k x d parameters; the joint objective goes down where it is solved; its two weights at 0 give back
fit's and distill's rows; the step down the true input gradient is that gradient and is chosen on the calibration
slice; the same seed gives the same bytes."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import TINY_TEXT, make_model
from transformers import AutoModelForCausalLM

from vocab_expand import expand
from vocab_expand.corpus import Corpus
from vocab_expand.strategies.fit.solve import FitData, objective
from vocab_expand.strategies.joint import JointOptions
from vocab_expand.strategies.joint.objective import joint_objective, pull, solve_joint

WORDS = ["Jehoshaphat", "prophets", "Tokyo"]
TRAIN = [t for t in TINY_TEXT for _ in range(12)] + [
    f"And Jehoshaphat sent {i} of the prophets unto the king in Tokyo." for i in range(40)]
CORPUS = Corpus("tiny", train=TRAIN, heldout=TINY_TEXT[:2])
FAST = dict(sample_max_positions=4000, distill_epochs=2, calibration_fraction=0.25)


def joint_options(**weights: float) -> dict:
    return {"strategy_options": {"joint": JointOptions(**weights)}}


@pytest.fixture(scope="module")
def tied_expansion(tiny_tokenizer):
    model = make_model("tied", len(tiny_tokenizer))
    return model, expand(model, tiny_tokenizer, WORDS, corpus=CORPUS, **FAST)


def test_a_tied_model_stays_tied_and_grows_by_k_times_d(tied_expansion, tmp_path):
    model, result = tied_expansion
    report = result.report
    assert report["tied"] and (report["input_strategy"], report["output_strategy"]) == ("joint", "joint")
    k, d = len(result.new_token_ids), model.get_input_embeddings().weight.shape[1]
    assert k == 3 and report["parameters_added"] == k * d
    assert report["parameters_before"] == sum(p.numel() for p in model.parameters())
    expanded = result.model
    assert expanded.get_output_embeddings().weight is expanded.get_input_embeddings().weight
    result.save(tmp_path / "out")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert reloaded.get_output_embeddings().weight.data_ptr() == reloaded.get_input_embeddings().weight.data_ptr()
    assert sum(p.numel() for p in reloaded.parameters()) == report["parameters_after"]
    torch.testing.assert_close(reloaded.get_input_embeddings().weight, expanded.get_input_embeddings().weight,
                               rtol=0, atol=0)
    n = model.get_input_embeddings().weight.shape[0]  # old rows bit for bit
    assert torch.equal(expanded.get_input_embeddings().weight[:n], model.get_input_embeddings().weight)


def test_the_trade_off_is_chosen_on_the_calibration_slice(tied_expansion):
    _, result = tied_expansion
    joint = result.report["data_driven"]["joint"]
    path = joint["input_weight_path"]
    assert path[0]["input_weight"] == "inf" and len(path) >= 3  # the distilled rows, then the path
    best = min(path, key=lambda p: p["calibration_nats"])
    assert joint["input_weight"] == best["input_weight"]
    assert all(math.isfinite(p["calibration_nats"]) for p in path)


def random_problem(seed: int, positions: int = 300, k: int = 3, d: int = 5) -> FitData:
    g = torch.Generator().manual_seed(seed)
    target = torch.where(torch.rand(positions, generator=g) < 0.3, torch.randint(0, k, (positions,), generator=g), -1)
    return FitData(torch.randn(positions, d, generator=g), torch.randn(positions, generator=g) + 3.0, target,
                   torch.randn(positions, generator=g), torch.rand(positions, generator=g) + 0.5)


@pytest.mark.parametrize("weights", [(1.0, 1.0), (0.05, 1.0), (2.0, 0.5)])
def test_the_joint_objective_goes_down_to_its_minimum(weights):
    w_in, w_out = weights
    data = random_problem(0)
    g = torch.Generator().manual_seed(1)
    mean, anchor = torch.randn(1, 5, generator=g).expand(3, 5).clone(), torch.randn(3, 5, generator=g)
    free = torch.ones(3, dtype=torch.bool)
    rows = solve_joint(data, mean, mean, anchor, 1e-2, w_in / w_out, free=free, cap=None, max_iter=200)

    def J(e: torch.Tensor) -> torch.Tensor:
        return joint_objective(e, data, mean, anchor, 1e-2, w_in, w_out)

    found = J(rows).item()
    assert found < min(J(mean).item(), J(anchor).item()) - 1e-4
    param = rows.clone().requires_grad_(True)
    J(param).backward()
    assert param.grad.norm() < 1e-3  # a stationary point of J itself, not only of the combined pull
    for step in range(10):  # and no nearby point is lower (J is convex)
        nudge = 1e-2 * torch.randn(3, 5, generator=torch.Generator().manual_seed(step))
        assert J(rows + nudge).item() >= found - 1e-7


def test_the_combined_pull_equals_the_two_pulls():
    g = torch.Generator().manual_seed(0)
    mean, anchor, rows = (torch.randn(3, 5, generator=g) for _ in range(3))
    center, strength = pull(mean, anchor, 0.3, 0.7)
    both = 0.3 * (rows - mean).pow(2).sum() + 0.7 * (rows - anchor).pow(2).sum()
    one = strength * (rows - center).pow(2).sum()
    constant = 0.3 * (center - mean).pow(2).sum() + 0.7 * (center - anchor).pow(2).sum()
    torch.testing.assert_close(both, one + constant)
    data = random_problem(2)
    assert torch.equal(pull(mean, anchor, 0.3, 0.0)[0], mean)
    torch.testing.assert_close(objective(rows, data, center, strength) + 0.5 * constant,
                               joint_objective(rows, data, mean, anchor, 0.3, 0.7, 1.0))


def test_input_weight_0_is_fit_and_output_weight_0_is_distill_on_the_shared_row(tiny_tokenizer):
    """Untied distill/fit learns the same signals apart: its head rows are fit's rows on states read with the
    distilled rows, its input rows are distill's. joint with one weight at 0 shares exactly those rows."""
    model = make_model("tied", len(tiny_tokenizer))
    apart = expand(model, tiny_tokenizer, WORDS, corpus=CORPUS, tie_policy="untie", **FAST)
    ids = apart.new_token_ids
    fit_only = expand(model, tiny_tokenizer, WORDS, corpus=CORPUS, **joint_options(input_weight=0.0), **FAST)
    distill_only = expand(model, tiny_tokenizer, WORDS, corpus=CORPUS, **joint_options(output_weight=0.0), **FAST)
    assert fit_only.report["tied"] and distill_only.report["tied"]
    assert torch.equal(fit_only.model.get_input_embeddings().weight[ids], apart.model.get_output_embeddings().weight[ids])
    assert torch.equal(distill_only.model.get_input_embeddings().weight[ids], apart.model.get_input_embeddings().weight[ids])
    assert not torch.allclose(fit_only.model.get_input_embeddings().weight[ids],
                              distill_only.model.get_input_embeddings().weight[ids])


def test_same_seed_same_bytes_and_another_seed_differs(tied_expansion, tiny_tokenizer):
    model, first = tied_expansion
    again = expand(model, tiny_tokenizer, WORDS, corpus=CORPUS, **FAST)
    ids = first.new_token_ids
    assert torch.equal(first.model.get_input_embeddings().weight[ids], again.model.get_input_embeddings().weight[ids])
    other = expand(model, tiny_tokenizer, WORDS, corpus=CORPUS, seed=1, **FAST)
    assert not torch.equal(first.model.get_input_embeddings().weight[ids], other.model.get_input_embeddings().weight[ids])


def test_clear_errors(tiny_tokenizer):
    untied = make_model("untied", len(tiny_tokenizer))
    with pytest.raises(ValueError, match="shared row of a tied model"):
        expand(untied, tiny_tokenizer, WORDS, input_init="joint", output_init="joint", corpus=CORPUS, **FAST)
    tied = make_model("tied", len(tiny_tokenizer))
    with pytest.raises(ValueError, match="corpus="):
        expand(tied, tiny_tokenizer, WORDS, input_init="joint", output_init="joint")
    with pytest.raises(ValueError, match="joint_input_weight"):
        JointOptions(input_weight=-1.0)
    with pytest.raises(ValueError, match="both be 0"):
        JointOptions(input_weight=0.0, output_weight=0.0)
    assert not expand(tied, tiny_tokenizer, WORDS, tie_policy="untie", corpus=CORPUS, **FAST).report["tied"]


def test_the_input_weight_walk_goes_up_when_its_first_weight_is_the_best(monkeypatch):
    """Down from 1e-2 until the calibration loss rises; up from 1e-2 when 1e-2 won the way down (gemma3-270m's
    case), so a best weight above the starting one is still found."""
    import math

    from vocab_expand.strategies.joint import objective

    def solve(train, rows, mean_row, anchor, reg, ratio, **kwargs):  # the rows remember their weight
        return torch.tensor([1e6 if math.isinf(ratio) else ratio], dtype=torch.float64)

    monkeypatch.setattr(objective, "solve_joint", solve)
    for best in (1e-3, 1.0):
        score = lambda rows, best=best: abs(math.log10(max(rows.item(), 1e-9)) - math.log10(best))
        chosen, rows, path = objective.choose_input_weight(None, None, None, None, 1e-3, free=None, cap=None,
                                                           score=score)
        assert chosen == best and rows.item() == best
        tried = [p["input_weight"] for p in path]
        assert tried == (["inf", 1e-2, 1e-3, 1e-4] if best == 1e-3 else ["inf", 1e-2, 1e-3, 1e-1, 1.0, 10.0])


def test_the_scored_windows_stand_for_every_calibration_occurrence():
    """More words than scored windows (1,000 words, 256 windows): the occurrences of words without a window are
    shared out over the scored ones, so the input signal counts every calibration occurrence, not a quarter."""
    from vocab_expand.strategies.joint.objective import window_weights

    target = torch.tensor([0, 0, 0, 1, 2, 2, -1, -1, -1, -1])  # word 0: 3 occurrences, 1: 1, 2: 2, 3: none
    data = FitData(torch.zeros(10, 2), torch.zeros(10), target, torch.zeros(10), torch.ones(10))
    omega = window_weights(data, [0, 0, 1], k=4)  # word 0 has two windows, word 1 one, words 2 and 3 none
    per_window = omega[torch.tensor([0, 0, 1])]
    assert per_window.sum().item() == pytest.approx(6 / 10)  # all 6 occurrences, per calibration position
    assert omega[0].item() == pytest.approx(3 / 2 * 6 / 4 / 10) and omega[1].item() == pytest.approx(1 * 6 / 4 / 10)
    assert omega[2].item() == 0 and omega[3].item() == 0
    every = window_weights(data, [0, 1, 2], k=4)  # every word scored: each stands for its own occurrences
    assert every.tolist() == pytest.approx([3 / 10, 1 / 10, 2 / 10, 0.0])
    assert window_weights(data, [], k=4).sum().item() == 0


@pytest.fixture(scope="module")
def stepped_expansion(tiny_tokenizer, tied_expansion):
    """The same expansion with the step down the input gradient chosen on the calibration slice."""
    model, _ = tied_expansion
    return expand(model, tiny_tokenizer, WORDS, corpus=CORPUS, **joint_options(input_step=None), **FAST)


def test_the_step_down_the_true_input_gradient_is_chosen_on_the_calibration_slice(stepped_expansion):
    """The walk's rows score `unstepped` (the input-weight path's best); the step's path starts there, and the
    kept share is the path's lowest score, so the step never scores worse than no step."""
    joint = stepped_expansion.report["data_driven"]["joint"]
    path = joint["input_step_path"]
    assert path[0] == {"share": 0.0, "calibration_nats": min(p["calibration_nats"] for p in joint["input_weight_path"])}
    assert joint["input_step"] == min(path, key=lambda p: p["calibration_nats"])["share"]
    assert joint["input_gradient_windows"] > 0 and len(path) >= 2


def test_the_input_gradient_is_the_gradient_of_the_next_tokens_loss(tiny_tokenizer):
    """input_gradient against central differences of the loss it differentiates, along random directions, and
    zero on rows not free; the model's own weights get no gradient."""
    from vocab_expand.strategies.distill.maths import Distiller
    from vocab_expand.strategies.joint.objective import input_gradient, old_head, tail_nll

    model = make_model("tied", len(tiny_tokenizer))
    tokens_before, d = len(tiny_tokenizer), model.get_input_embeddings().weight.shape[1]
    ids = lambda text: tiny_tokenizer(text, add_special_tokens=False)["input_ids"]
    from vocab_expand.learning.windows import Window

    windows = [Window(word=j, prefix=[0, *ids(" the king")], student=[tokens_before + j, *ids(" went up")], teacher=[],
                      student_positions=[], teacher_positions=[], calibration=False) for j in (0, 1, 0)]
    g = torch.Generator().manual_seed(0)
    rows = 0.05 * torch.randn(3, d, generator=g)
    omega = torch.tensor([0.5, 1.0, 2.0])
    free = torch.tensor([True, True, False])
    grad = input_gradient(model, windows, rows, omega, tokens_before, free=free)
    assert all(p.grad is None for p in model.parameters())
    assert grad[2].abs().max() == 0 and grad[:2].abs().max() > 0
    distiller, old = Distiller(model, windows, tokens_before, teacher=False, read_ahead=False), old_head(model, tokens_before)

    def loss(e: torch.Tensor) -> float:
        with torch.no_grad():
            return sum(float((omega[[w.word for w in b.windows]]
                              * tail_nll(model, distiller.final_states(e, i), b.windows, rows, old)).sum())
                       for i, b in enumerate(distiller.batches))

    for seed in range(3):
        v = torch.randn(3, d, generator=torch.Generator().manual_seed(seed)) * free.unsqueeze(1)
        eps = 1e-3
        numeric = (loss(rows + eps * v) - loss(rows - eps * v)) / (2 * eps)
        assert float((grad * v).sum()) == pytest.approx(numeric, rel=2e-2, abs=1e-5)


def test_the_input_step_and_its_walk():
    """The step is `share` of |rows - mean| long, down the gradient; the walk stops at the first rise and keeps
    the lowest score, no step included."""
    from vocab_expand.strategies.joint import objective

    rows, mean = torch.tensor([[3.0, 4.0], [0.0, 0.0]]), torch.zeros(2, 2)
    grad = torch.tensor([[0.0, 2.0], [0.0, 0.0]])
    free = torch.tensor([True, False])
    stepped = objective.input_step(rows, grad, mean, 0.1, free)
    torch.testing.assert_close(stepped, torch.tensor([[3.0, 3.5], [0.0, 0.0]]))  # |rows - mean| 5: a 0.5 step
    assert torch.equal(objective.input_step(rows, grad, mean, 0.0, free), rows)
    best_share = objective.INPUT_STEP_PATH[2]

    def score(candidate: torch.Tensor) -> float:
        share = (rows - candidate).norm().item() / 5.0
        return abs(share - best_share)

    share, path = objective.choose_input_step(rows, grad, mean, free, score, unstepped=1.0)
    assert share == pytest.approx(best_share)
    assert [p["share"] for p in path] == [0.0, *objective.INPUT_STEP_PATH[:4]]  # stops after the first rise
    assert objective.choose_input_step(rows, grad, mean, free, lambda e: 2.0, unstepped=1.0)[0] == 0.0
    with pytest.raises(ValueError, match="joint_input_step"):
        JointOptions(input_step=-0.1)


def test_input_step_0_the_default_keeps_the_solved_rows(tied_expansion, stepped_expansion):
    """joint_input_step=0 (the default): no gradient pass, and the rows differ from the stepped ones by the
    chosen step only."""
    model, plain = tied_expansion
    default = stepped_expansion
    joint = plain.report["data_driven"]["joint"]
    assert joint["input_step"] == 0.0 and "input_step_path" not in joint
    ids = plain.new_token_ids
    unstepped = plain.model.get_input_embeddings().weight[ids].detach()
    moved = default.model.get_input_embeddings().weight[ids].detach() - unstepped
    share = default.report["data_driven"]["joint"]["input_step"]
    assert share > 0  # on this model the walk keeps a step, so the two differ
    tokens_before = model.get_input_embeddings().weight.shape[0]
    mean_row = model.get_input_embeddings().weight[:tokens_before].detach().to(torch.float32).mean(0)
    assert moved.norm().item() == pytest.approx(share * (unstepped - mean_row).norm().item(), rel=1e-3)
