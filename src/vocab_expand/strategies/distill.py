"""`distill` (input rows): new input rows that make the frozen model behave as it did on the word's pieces.

Start from `subword` and optimize only the new input rows, so that the hidden states at the new token and a
short window after it match those the original model produces on the original pieces, over the contexts
where the word occurs in the domain text (Token Distillation, Dobler et al. 2026). All words are
distilled together; a calibration slice stops it early. Words seen too rarely keep `subword` rows.
"""

from __future__ import annotations

from torch import Tensor

from .base import RowRequest, Strategy, register_strategy
from .subword import Subword


@register_strategy
class Distill(Strategy):
    name = "distill"
    summary = "input rows distilled to reproduce the model's states on the word's pieces; needs a corpus"
    source = "Dobler et al. 2026, Token Distillation"
    needs_corpus = True
    sides = ("input",)

    def rows(self, old: Tensor, request: RowRequest) -> Tensor:
        """The starting point and the fallback: subword rows."""
        return Subword().rows(old, request)
