"""`subword`: each new row is the mean of the rows of the pieces the word split into before expansion.

This is Fast Vocabulary Transfer (Gee et al., 2022, "Fast Vocabulary Transfer for Language Model
Compression"). On the input side it keeps what the model knew about the word. On a tied or output side it is
also bounded: by Jensen, exp(h.mean(e_p)) <= mean_p exp(h.e_p) <= Z/m for a word of m pieces.
For an output bias, the new entry is the mean of the pieces' bias entries.

Left out: weights per piece (FOCUS, WECHSEL); context (`distill` reads the word in its sentences)."""

from __future__ import annotations

import torch
from torch import Tensor

from .base import RowRequest, Strategy, register_strategy


@register_strategy
class Subword(Strategy):
    name = "subword"
    summary = "mean of the rows of the word's old pieces (FVT); carries the word's meaning"
    source = "Gee et al. 2022, Fast Vocabulary Transfer (FVT)"

    def rows(self, old: Tensor, request: RowRequest) -> Tensor:
        if any(len(p) == 0 for p in request.pieces):
            raise ValueError("subword initialization needs at least one old piece for every new token")
        flat = torch.tensor([i for p in request.pieces for i in p], dtype=torch.long, device=old.device)
        owner = torch.repeat_interleave(
            torch.arange(request.k, device=old.device),
            torch.tensor([len(p) for p in request.pieces], device=old.device),
        )
        gathered = old.index_select(0, flat).to(torch.float32)
        sums = torch.zeros(request.k, old.shape[1], dtype=torch.float32, device=old.device)
        sums.index_add_(0, owner, gathered)
        counts = torch.bincount(owner, minlength=request.k).to(torch.float32).unsqueeze(1)
        return sums / counts
