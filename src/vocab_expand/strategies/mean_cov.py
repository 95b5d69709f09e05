"""`mean_cov`: rows sampled from N(mu, s * Sigma), mu and Sigma the mean and covariance of the existing rows.

Two exact samplers, and the cheaper one is chosen: mu + sqrt(s) (E - mu)^T z / sqrt(n) with z ~ N(0, I_n)
costs O(k n d) and never forms the d x d covariance; a factor of Sigma costs O(n d^2 + d^3) and wins for
k above about d. Both have exactly the distribution N(mu, s Sigma). s is MeanCovOptions.scale
(ExpandConfig's cov_scale).
Source: Hewitt (2021); transformers' mean resizing uses s = 1e-9 (see `hf_default`).

Left out: transformers' positive-definiteness check (`hf_default` keeps it)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from ..errors import InvalidInputError
from ..options import opt

from .. import stats
from .base import RowRequest, Strategy, register_strategy


@dataclass(frozen=True)
class MeanCovOptions:
    # Small, so rows differ but logits barely move.
    scale: float = opt(1e-5, "mean_cov: variance scale s of N(mu, s * Sigma)")

    def __post_init__(self) -> None:
        if not self.scale >= 0:
            raise InvalidInputError(f"cov_scale must be >= 0, got {self.scale}")


@register_strategy
class MeanCov(Strategy):
    name = "mean_cov"
    summary = "sample N(mu, s*Sigma) of the existing rows, exact and without the d x d matrix when k is small"
    source = "Hewitt 2021 (mean plus covariance noise)"
    options_class = MeanCovOptions

    def rows(self, old: Tensor, request: RowRequest) -> Tensor:
        ref = self.reference(old, request)
        mu = stats.row_mean(ref)
        scale = (request.options or MeanCovOptions()).scale
        n, d = ref.shape
        sampler = stats.sample_gaussian_rows_lowrank if stats.lowrank_is_cheaper(n, d, request.k) else (
            stats.sample_gaussian_rows_cov
        )
        return sampler(ref, mu, request.k, scale, request.generator)
