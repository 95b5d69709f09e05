"""`fit` (output rows): the new rows that minimize the expanded model's cross-entropy on domain text.

With the model frozen, the hidden state at every position of the (expanded) training text does not depend
on the new output rows. With the old logits fixed, the loss sum_t [logaddexp(log Z_t, logsumexp_j h_t.e_j)
- logit_t(target)] + reg/2 sum_j |e_j - mean|^2 is convex in the new rows, so it is solved exactly
(L-BFGS on cached states, solve.py). The fitted rows take the probability that belongs to the new words,
and no more than the text supports; infinite reg gives back `mean`, the fallback for rarely seen words.
Without domain text there is nothing to fit: use `mean`.

Needs: the domain sample's hidden states, computed with the final input rows.

Left out: sampling and running the model (learning/), writing rows (rows/).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from ...errors import InvalidInputError
from ...options import opt
from ..base import DataDrivenStrategy, Learned, RowRequest, register_strategy

if TYPE_CHECKING:
    from ...learning.context import LearnContext
    from .solve import FitData


# Past this pull the fitted row is the mean row to float32 precision, and larger values overflowed the solve
# (1e30 and inf raised RuntimeError): `mean` is the way to ask for that row.
MAX_REG = 1e6


@dataclass(frozen=True)
class FitOptions:
    """Options of `fit` (ExpandConfig alias: fit_reg)."""

    # None: chosen on the calibration slice (a path of decades, then refined between the best two).
    reg: float | None = opt(None, "fit: L2 pull toward the mean row (default: chosen on a calibration slice)")

    def __post_init__(self) -> None:
        if self.reg is not None and not 0 <= self.reg <= MAX_REG:
            raise InvalidInputError(f"fit_reg must be from 0 to {MAX_REG:g}, or None (chosen on the calibration slice), "
                                    f"got {self.reg}; a stronger pull gives the mean row: use output_init='mean'")


@register_strategy
class Fit(DataDrivenStrategy):
    name = "fit"
    summary = "output rows fitted to domain text (convex, L2 pull to the mean row); needs a corpus"
    source = "vocab-expand; a maximum-likelihood refinement of Hewitt 2021's mean rows"
    sides = ("output",)
    options_class = FitOptions
    needs = frozenset({"states"})

    def rows(self, old: Tensor, request: RowRequest) -> Tensor:
        """The starting point and the fallback: the mean row."""
        return self.repeat_mean(old, request)

    def learn(self, context: "LearnContext", start: Tensor, start_bias: Tensor | None, options: FitOptions) -> Learned:
        from ...heads import softcap
        from .solve import fit_rows

        cached = cached_positions(context)
        data, is_cal = cached.data, cached.calibration
        if start_bias is not None:
            data, start = data.with_bias_column(), torch.cat([start, start_bias.unsqueeze(1)], 1)
        result = fit_rows(data.select(~is_cal), data.select(is_cal), start, start.clone(), free=cached.free,
                          reg=options.reg, cap=softcap(context.model), progress=context.progress)
        result.report.update(cached.facts(context.words))
        d = start.shape[1] - (1 if start_bias is not None else 0)
        bias = result.rows[:, d] if start_bias is not None else None
        return Learned(result.rows[:, :d].contiguous(), bias, result.report)


@dataclass
class CachedPositions:
    """The positions a fit solves on: data (solve.FitData), calibration [P] bool, free [k] (words seen often
    enough to fit; the others keep their starting rows), positions: weighted positions before thinning."""

    data: "FitData"
    calibration: Tensor
    free: Tensor
    positions: int

    def facts(self, words: list[str]) -> dict[str, Any]:
        """What the report says about the positions."""
        return {"positions": self.positions, "solved_positions": int(self.data.hidden.shape[0]),
                "calibration_positions": int(self.calibration.sum()),
                "fallback_words": [w for w, f in zip(words, self.free.tolist()) if not f]}


def cached_positions(context: "LearnContext") -> CachedPositions:
    """The context's cached states (computed with context.input_rows) as fit data: targets as new-token
    indices, weighted positions only, thinned to solve.SOLVE_MAX_POSITIONS (shared by fit and joint)."""
    from .solve import SOLVE_MAX_POSITIONS, FitData, thinned

    states = context.states()
    tokens_before = context.tokens_before
    kept = states.weight > 0
    data = FitData(hidden=states.stats.hidden, log_z=states.stats.log_z,
                   target=torch.where(states.stats.target >= tokens_before, states.stats.target - tokens_before, -1),
                   target_logit=torch.nan_to_num(states.stats.target_logit, nan=0.0),
                   weight=states.weight).select(kept)
    data, is_cal = thinned(data, states.calibration[kept], SOLVE_MAX_POSITIONS, context.config.seed)
    free = context.sample().occurrences(calibration=False) >= max(1, context.config.sampling.min_occurrences)
    return CachedPositions(data, is_cal, free, int(kept.sum()))
