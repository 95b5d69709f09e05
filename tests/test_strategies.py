"""Every strategy through one shared test, plus a case per strategy whose answer is worked out by hand."""

from __future__ import annotations

import pytest
import torch

from vocab_expand import STRATEGIES, RowRequest, Strategy, get_strategy, register_strategy
from vocab_expand.strategies.mean_cov import MeanCovOptions

PIECES = [[0, 1], [2], [1, 2, 3]]


def request(seed: int = 0, tokens_before: int = 6, options: object = None) -> RowRequest:
    return RowRequest(pieces=PIECES, tokens_before=tokens_before,
                      generator=torch.Generator().manual_seed(seed), initializer_range=0.02, options=options)


def old_matrix(dtype: torch.dtype = torch.float32) -> torch.Tensor:
    torch.manual_seed(1)
    return (torch.randn(8, 5) + 3.0).to(dtype)


@pytest.mark.parametrize("name", sorted(STRATEGIES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_every_strategy_shapes_dtype_finite_and_seeded(name, dtype):
    strategy = get_strategy(name)
    old = old_matrix(dtype)
    rows = strategy.rows(old, request(seed=3))
    assert rows.shape == (3, 5) and rows.dtype == torch.float32
    assert torch.isfinite(rows).all()
    assert torch.equal(rows, strategy.rows(old, request(seed=3)))  # same seed, same bytes
    bias = strategy.bias(old[:, 0], request(seed=3))
    assert bias.shape == (3,) and torch.isfinite(bias).all()
    assert torch.equal(old, old_matrix(dtype))  # strategies never write to the old matrix


def test_random_rows_differ_by_seed_and_follow_initializer_range():
    strategy = get_strategy("random")
    big = RowRequest(pieces=[[0]] * 4000, tokens_before=6, generator=torch.Generator().manual_seed(0))
    rows = strategy.rows(old_matrix(), big)
    assert rows.mean().abs() < 2e-3 and abs(rows.std().item() - 0.02) < 1e-3
    assert not torch.equal(strategy.rows(old_matrix(), request(1)), strategy.rows(old_matrix(), request(2)))
    assert torch.equal(strategy.bias(old_matrix()[:, 0], request()), torch.zeros(3))


def test_zeros_by_hand():
    assert torch.equal(get_strategy("zeros").rows(old_matrix(), request()), torch.zeros(3, 5))


def test_mean_by_hand_uses_the_old_vocabulary_rows_only():
    old = torch.tensor([[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]])  # row 2 is a spare, untrained row
    rows = get_strategy("mean").rows(old, RowRequest([[0], [1]], 2, torch.Generator()))
    assert torch.equal(rows, torch.tensor([[2.0, 3.0], [2.0, 3.0]]))


def test_subword_by_hand():
    old = torch.tensor([[0.0, 0.0], [2.0, 4.0], [4.0, 8.0], [9.0, 9.0]])
    rows = get_strategy("subword").rows(old, RowRequest([[1, 2], [3], [0, 1, 2]], 4, torch.Generator()))
    assert torch.allclose(rows, torch.tensor([[3.0, 6.0], [9.0, 9.0], [2.0, 4.0]]))
    bias = get_strategy("subword").bias(torch.tensor([1.0, 2.0, 6.0, 0.0]), RowRequest([[1, 2]], 4, torch.Generator()))
    assert torch.allclose(bias, torch.tensor([4.0]))


def test_subword_needs_pieces():
    with pytest.raises(ValueError, match="at least one old piece"):
        get_strategy("subword").rows(old_matrix(), RowRequest([[]], 6, torch.Generator()))


def test_mean_cov_with_zero_scale_is_the_mean():
    rows = get_strategy("mean_cov").rows(old_matrix(), request(options=MeanCovOptions(scale=0.0)))
    assert torch.allclose(rows, old_matrix()[:6].mean(0).expand(3, -1), atol=1e-6)


@pytest.mark.parametrize("sampler", ["lowrank", "cov"])
def test_mean_cov_samples_have_the_asked_covariance(sampler, monkeypatch):
    torch.manual_seed(0)
    old = torch.randn(400, 3) @ torch.tensor([[2.0, 0.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.5, 0.3]]) + 1.0
    sigma = torch.cov(old.T, correction=0)
    monkeypatch.setattr("vocab_expand.stats.lowrank_is_cheaper", lambda n, d, k: sampler == "lowrank")
    req = RowRequest([[0]] * 20000, 400, torch.Generator().manual_seed(0), options=MeanCovOptions(scale=0.25))
    rows = get_strategy("mean_cov").rows(old, req)
    assert torch.allclose(rows.mean(0), old.mean(0), atol=0.03)
    assert torch.allclose(torch.cov(rows.T), 0.25 * sigma, atol=0.04, rtol=0.05)


def test_hf_default_is_mean_plus_tiny_noise_or_exact_mean():
    old = old_matrix()
    rows = get_strategy("hf_default").rows(old, request())
    assert torch.allclose(rows, old.mean(0).expand(3, -1), atol=1e-3)  # over ALL rows, as transformers
    singular = torch.ones(8, 5)  # covariance 0: not positive definite, so transformers uses the mean exactly
    assert torch.equal(get_strategy("hf_default").rows(singular, request()), torch.ones(3, 5))


def test_registry_rejects_bad_and_duplicate_names():
    with pytest.raises(ValueError, match="already registered"):
        register_strategy(type("Again", (Strategy,), {"name": "mean", "rows": lambda s, o, r: o}))
    with pytest.raises(ValueError, match="must match"):
        register_strategy(type("Bad", (Strategy,), {"name": "Bad Name", "rows": lambda s, o, r: o}))
    with pytest.raises(ValueError, match="unknown strategy 'nope'; choose one of"):
        get_strategy("nope")
    assert set(STRATEGIES) >= {"hf_default", "random", "zeros", "mean", "mean_cov", "subword"}
    assert STRATEGIES["mean"].__name__ == "Mean"  # the failed duplicate did not replace it
