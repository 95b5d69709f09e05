"""`mean`: every new row is the mean of the existing rows of that matrix.

For an output row e = mean(E), Jensen gives exp(h.e) <= (1/n) sum_i exp(h.e_i) <= Z/n for every hidden
state h, so adding k such tokens moves at most KL = log(1 + k/n) nats on any prefix, for any model.
Source: John Hewitt (2021), https://nlp.stanford.edu/~johnhew/vocab-expansion.html ; also the
Alpaca/QLoRA `smart_tokenizer_and_embedding_resize`.

Left out: noise around the mean (`mean_cov`, `hf_default`); anything learned from text (`fit`)."""

from __future__ import annotations

from torch import Tensor

from .base import RowRequest, Strategy, register_strategy


@register_strategy
class Mean(Strategy):
    name = "mean"
    summary = "mean of the existing rows; KL(old||new) <= log(1 + k/n) for any model (the safe output default)"
    source = "Hewitt 2021, https://nlp.stanford.edu/~johnhew/vocab-expansion.html"

    def rows(self, old: Tensor, request: RowRequest) -> Tensor:
        return self.repeat_mean(old, request)
