"""Chunked statistics equal the direct computation, for every dtype and across chunk boundaries."""

from __future__ import annotations

import pytest
import torch

from vocab_expand import stats


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_chunked_mean_and_covariance_match_direct(dtype, monkeypatch):
    monkeypatch.setattr(stats, "CHUNK_ROWS", 7)  # force several chunks, one partial
    torch.manual_seed(0)
    matrix = (torch.randn(50, 6) * 3 + 1).to(dtype)
    direct = matrix.double()
    assert torch.allclose(stats.row_mean(matrix).double(), direct.mean(0), atol=1e-5)
    assert torch.allclose(stats.row_covariance(matrix).double(), torch.cov(direct.T, correction=0), atol=1e-4)


def test_mean_of_no_rows_is_an_error():
    with pytest.raises(ValueError, match="no rows"):
        stats.row_mean(torch.empty(0, 3))


def test_sampler_choice_follows_cost():
    assert stats.lowrank_is_cheaper(262144, 640, 100)
    assert not stats.lowrank_is_cheaper(262144, 640, 10000)
