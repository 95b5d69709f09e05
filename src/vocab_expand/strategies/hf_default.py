"""`hf_default`: what transformers' resize_token_embeddings(mean_resizing=True) does today (v4.46+ default).

Mean mu and covariance Sigma over *all* rows of the old matrix (spare padding rows included, as transformers
does); if 1e-9 * Sigma is positive definite, rows are sampled from N(mu, 1e-9 Sigma), otherwise every row is mu.
A new bias entry is sampled from N(mean(b), (1e-9 std(b))^2). Reimplemented (same distribution, our seeded
generator) so that it can be compared with the other strategies on equal terms; placement of the rows
follows our resize (spare rows reused), not transformers' (always appended).
Source: transformers PR #33325, modeling_utils._init_added_embeddings_weights_with_mean.

Left out: transformers' placement and its DeepSpeed ZeRO-3 gathering (rows/layout.py places the rows)."""

from __future__ import annotations

import torch
from torch import Tensor

from .. import stats
from .base import RowRequest, Strategy, register_strategy

HF_EPSILON = 1e-9


@register_strategy
class HFDefault(Strategy):
    name = "hf_default"
    summary = "transformers' mean resizing: N(mu, 1e-9*Sigma) if positive definite, else mu (for comparison)"
    source = "transformers >= 4.46, resize_token_embeddings(mean_resizing=True)"

    def rows(self, old: Tensor, request: RowRequest) -> Tensor:
        mu = stats.row_mean(old)
        cov = stats.row_covariance(old, mu)
        # transformers checks positive definiteness in float32, where 1e-9 * Sigma often fails: same check here.
        _, info = torch.linalg.cholesky_ex(HF_EPSILON * cov)
        if int(info) != 0:  # not positive definite: transformers falls back to the plain mean
            return mu.expand(request.k, -1).clone()
        factor = torch.linalg.cholesky(HF_EPSILON * cov.double())
        z = torch.randn(request.k, old.shape[1], generator=request.generator, dtype=torch.float64)
        return (mu.double() + z.to(old.device) @ factor.T).to(torch.float32)

    def bias(self, old: Tensor, request: RowRequest) -> Tensor:
        as_float = old.to(torch.float32)
        std = as_float.std() if as_float.numel() > 1 else torch.zeros((), dtype=torch.float32)
        z = torch.randn(request.k, generator=request.generator, dtype=torch.float32).to(old.device)
        return as_float.mean() + HF_EPSILON * std * z
