"""`mean_cov`: rows sampled from N(mu, s * Sigma), mu and Sigma the mean and covariance of the existing rows.

Two exact samplers, and the cheaper one is chosen: mu + sqrt(s) (E - mu)^T z / sqrt(n) with z ~ N(0, I_n)
costs O(k n d) and never forms the d x d covariance; a factor of Sigma costs O(n d^2 + d^3) and wins for
k above about d. Both have exactly the distribution N(mu, s Sigma). s is ExpandConfig.cov_scale.
Source: Hewitt (2021); transformers' mean resizing uses s = 1e-9 (see `hf_default`)."""

from __future__ import annotations

from torch import Tensor

from .. import stats
from .base import RowRequest, Strategy, register_strategy


@register_strategy
class MeanCov(Strategy):
    name = "mean_cov"
    summary = "sample N(mu, s*Sigma) of the existing rows, exact and without the d x d matrix when k is small"
    source = "Hewitt 2021 (mean plus covariance noise)"

    def rows(self, old: Tensor, request: RowRequest) -> Tensor:
        ref = self.reference(old, request)
        mu = stats.row_mean(ref)
        scale = float(request.options.get("cov_scale", 1e-5))
        n, d = ref.shape
        sampler = stats.sample_gaussian_rows_lowrank if stats.lowrank_is_cheaper(n, d, request.k) else (
            stats.sample_gaussian_rows_cov
        )
        return sampler(ref, mu, request.k, scale, request.generator)
