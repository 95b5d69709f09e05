"""`random`: N(0, initializer_range^2) rows, the older transformers default (mean_resizing=False).
Its logits are near 0, so like `zeros` it takes nearly all probability on models with negative logits.
The bias (untied heads) starts at 0, as transformers' _init_weights leaves it.

Left out: any safety: kept to show the collapse, as `zeros` is."""

from __future__ import annotations

import torch
from torch import Tensor

from .base import RowRequest, Strategy, register_strategy


@register_strategy
class RandomNormal(Strategy):
    name = "random"
    summary = "N(0, initializer_range^2) rows, the old transformers default (unsafe; for comparison)"
    source = "transformers resize_token_embeddings(mean_resizing=False) / PreTrainedModel._init_weights"

    def rows(self, old: Tensor, request: RowRequest) -> Tensor:
        sample = torch.randn(request.k, old.shape[1], generator=request.generator, dtype=torch.float32)
        return (sample * request.initializer_range).to(old.device)

    def bias(self, old: Tensor, request: RowRequest) -> Tensor:
        return torch.zeros(request.k, dtype=torch.float32, device=old.device)
