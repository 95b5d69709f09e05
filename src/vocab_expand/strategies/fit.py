"""`fit` (output rows): the new rows that minimize the expanded model's cross-entropy on domain text.

With the model frozen, the hidden state at every position of the (expanded) training text does not depend
on the new output rows. With the old logits fixed, the loss sum_t [logaddexp(log Z_t, logsumexp_j h_t.e_j)
- logit_t(target)] + reg/2 sum_j |e_j - mean|^2 is convex in the new rows, so it is solved exactly
(L-BFGS on cached states, fitting.py). The fitted rows take the probability that belongs to the new words,
and no more than the text supports; infinite reg gives back `mean`, the fallback for rarely seen words.
Without domain text there is nothing to fit: use `mean`.
"""

from __future__ import annotations

from torch import Tensor

from .base import RowRequest, Strategy, register_strategy


@register_strategy
class Fit(Strategy):
    name = "fit"
    summary = "output rows fitted to domain text (convex, L2 pull to the mean row); needs a corpus"
    source = "vocab-expand; a maximum-likelihood refinement of Hewitt 2021's mean rows"
    needs_corpus = True
    sides = ("output",)

    def rows(self, old: Tensor, request: RowRequest) -> Tensor:
        """The starting point and the fallback: the mean row."""
        return self.repeat_mean(old, request)
