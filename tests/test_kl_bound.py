"""The closed-form KL equals brute force, and mean output rows stay within the Hewitt bound log(1 + k/n)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vocab_expand import hewitt_bound
from vocab_expand.metrics import (
    added_token_kl,
    full_softmax_kl,
    log_partition,
    moved_probability,
    predicted_kl_zero_rows,
)
from vocab_expand.strategies import RowRequest, get_strategy


@settings(max_examples=300, deadline=None)
@given(
    n=st.integers(2, 300),
    d=st.integers(1, 24),
    k=st.integers(1, 50),
    scale=st.floats(0.01, 30.0),
    shift=st.floats(-60.0, 20.0),
    seed=st.integers(0, 2**31 - 1),
)
def test_mean_output_rows_within_hewitt_bound(n, d, k, scale, shift, seed):
    g = torch.Generator().manual_seed(seed)
    head = torch.randn(n, d, generator=g, dtype=torch.float64) * scale
    hidden = torch.randn(16, d, generator=g, dtype=torch.float64)
    old_logits = hidden @ head.T + shift  # a shared shift, like a model whose logits are all negative
    rows = get_strategy("mean").rows(head, RowRequest([[0]] * k, n, g)).double()
    new_logits = hidden @ rows.T + shift
    kl = added_token_kl(log_partition(old_logits), new_logits)
    # Rows are computed in float32, so allow float32 rounding of the logits (equality holds when all are equal).
    tolerance = 1e-6 * (1.0 + old_logits.abs().max().item())
    assert (kl <= hewitt_bound(k, n) + tolerance).all()


def test_closed_form_equals_brute_force_on_random_models():
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        old = torch.randn(5, 40, generator=g) * 4 - 10
        new = torch.randn(5, 3, generator=g) * 4
        brute = full_softmax_kl(old, torch.cat([old, new], dim=-1))
        assert torch.allclose(added_token_kl(log_partition(old), new).double(), brute, atol=1e-5)


def test_hand_computed_case():
    # Two old tokens with logits 0 and 0 (Z = 2) and one new token with logit log 2: mass 2/(2+2) = 1/2.
    log_z = log_partition(torch.tensor([[0.0, 0.0]]))
    new = torch.tensor([[math.log(2.0)]])
    assert added_token_kl(log_z, new).item() == pytest.approx(math.log(2.0), rel=1e-6)
    assert moved_probability(log_z, new).item() == pytest.approx(0.5, rel=1e-6)
    # Zero rows on a model with log Z = -30: KL = log(1 + k e^30), i.e. nearly all mass moves.
    assert predicted_kl_zero_rows(torch.tensor([-30.0]), 2).item() == pytest.approx(math.log1p(2 * math.exp(30)))


def test_kl_is_accurate_when_log_z_is_large_and_negative():
    """A twin's log Z is about -300: the closed form must not lose the small KL to cancellation."""
    log_z = torch.tensor([-300.0])
    new = torch.tensor([[-300.0 - math.log(1e6)]])  # exp(new)/Z = 1e-6
    # float32 inputs near -300 carry about 1e-5 relative error; the old difference form returned 0 or 3e-5 here.
    assert added_token_kl(log_z, new).item() == pytest.approx(math.log1p(1e-6), rel=1e-4)


def test_adoption_by_hand():
    from vocab_expand.metrics import adoption

    share, per_word = adoption(torch.tensor([2.0, 1.0, 5.0]), torch.tensor([0.0, 3.0, 4.0]), torch.tensor([0, 0, 2]), 3)
    assert share == pytest.approx(2 / 3)
    assert per_word[0].item() == 0.5 and math.isnan(per_word[1].item()) and per_word[2].item() == 1.0
