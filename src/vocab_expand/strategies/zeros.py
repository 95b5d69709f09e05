"""`zeros`: every new row is 0. A logit of exactly 0 beats every logit of a model whose logits are all
strongly negative, so on such models this collapses generation onto the new tokens. Kept for comparison.

Left out: any safety: it is the failure case that `diagnose` shows, not a choice to make."""

from __future__ import annotations

import torch
from torch import Tensor

from .base import RowRequest, Strategy, register_strategy


@register_strategy
class Zeros(Strategy):
    name = "zeros"
    summary = "all-zero rows (unsafe on models with negative logits; for comparison)"
    source = "John Hewitt, 'Initializing new word embeddings for pretrained language models' (2021), baseline"

    def rows(self, old: Tensor, request: RowRequest) -> Tensor:
        return torch.zeros(request.k, old.shape[1], dtype=torch.float32, device=old.device)
