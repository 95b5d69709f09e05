"""`joint` (the shared row of a tied model): one row per new word, fitted against both signals.

A tied model reads and predicts each token with one row, so the distilled input row (`distill`) and the fitted
output row (`fit`) cannot both be kept without untying the head (28M more parameters on SmolLM2, 168M on
Gemma 3 270M). `joint` keeps the model tied and fits the one row e_w against both signals on the train split:
- the input signal: the model reading e_w reproduces what it computed from the old pieces (distill's rows A,
  Token Distillation, Dobler et al. 2026), as a pull toward A;
- the output signal: the expanded model's cross-entropy on the domain text, on states cached with A as input,
  with fit's L2 pull toward the mean row (Hewitt 2021) and its strength chosen on the calibration slice.
The weight of the input signal is chosen on the calibration slice too, by what the tied model loses there
(objective.py). input_weight 0 gives `fit` on the tied row, output_weight 0 gives `distill`'s rows. Words seen
too rarely keep the mean row, the safe output row.

Needs: the domain sample, its occurrence windows, and its states read with the distilled rows. Options of the
two signals are distill's and fit's own (distill_epochs, fit_reg, ...); joint adds the two weights.

Left out: an output bias (the shared row of a tied head with a bias keeps its mean entry); sampling and running
the model (learning/), writing rows (resize.py).
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from ...errors import InvalidInputError
from ...options import opt
from ..base import DataDrivenStrategy, Learned, RowRequest, register_strategy
from ..distill import Distill
from ..fit import cached_positions

if TYPE_CHECKING:
    from ...learning.context import LearnContext


@dataclass(frozen=True)
class JointOptions:
    """Options of `joint`: the weights of its two signals (distill's and fit's options set each signal)."""

    # None: chosen on the calibration slice (the distilled rows, then a path of decades down to 0).
    input_weight: float | None = opt(None, "joint: weight of the input signal (pull toward the distilled row); "
                                           "0 gives fit's row (default: chosen on a calibration slice)")
    # 0 keeps the distilled rows (distill's on a shared row); the scale of J does not change its minimizer.
    output_weight: float = opt(1.0, "joint: weight of the output signal (fit's loss and pull); 0 gives distill's row")

    def __post_init__(self) -> None:
        if self.input_weight is not None and not self.input_weight >= 0:
            raise InvalidInputError(f"joint_input_weight must be >= 0 or None (chosen on the calibration slice), "
                             f"got {self.input_weight}")
        if not self.output_weight >= 0:
            raise InvalidInputError(f"joint_output_weight must be >= 0, got {self.output_weight}")
        if self.output_weight == 0 and self.input_weight == 0:
            raise InvalidInputError("joint_input_weight and joint_output_weight cannot both be 0")


@register_strategy
class Joint(DataDrivenStrategy):
    name = "joint"
    summary = "the shared row of a tied model, fitted to both the input (distill) and output (fit) signal; needs a corpus"
    source = "vocab-expand; Token Distillation (Dobler et al. 2026) and fit (Hewitt 2021's mean as the pull)"
    sides = ("input", "output")
    options_class = JointOptions
    needs = frozenset({"sample", "windows", "states"})

    def rows(self, old: Tensor, request: RowRequest) -> Tensor:
        """The fallback for rarely seen words: the mean row, whose KL is bounded (Hewitt 2021)."""
        return self.repeat_mean(old, request)

    def learn(self, context: "LearnContext", start: Tensor, start_bias: Tensor | None,
              options: JointOptions) -> Learned:
        began = time.perf_counter()
        anchor, distilled = distilled_rows(context)
        if options.output_weight == 0:
            return Learned(anchor, start_bias, {"input_weight": options.input_weight, "output_weight": 0.0,
                                                "distill": distilled, "seconds": time.perf_counter() - began})
        with torch.no_grad():
            rows, report = fitted_rows(dataclasses.replace(context, input_rows=anchor), start, anchor, options)
        report.update({"distill": distilled, "seconds": time.perf_counter() - began})
        return Learned(rows, start_bias, report)


def distilled_rows(context: "LearnContext") -> tuple[Tensor, dict[str, Any]]:
    """(rows [k, d], report) of `distill` from subword rows: the input signal's minimizer. Kept in the shared
    cache (LearnContext.learned), as distill's own rows are, so a diagnosis distils once."""
    weight = context.model.get_input_embeddings().weight.data
    request = RowRequest(pieces=context.plan.pieces, reference_rows=context.n_old,
                         generator=torch.Generator().manual_seed(context.config.seed))
    learned = context.learned(Distill(), Distill().rows(weight, request))
    return learned.rows, learned.report


def fitted_rows(context: "LearnContext", start: Tensor, anchor: Tensor, options: JointOptions
                ) -> tuple[Tensor, dict[str, Any]]:
    """The rows minimizing J on states read with ``anchor`` (context.input_rows), mirroring fit_rows: reg and
    the input weight chosen on the calibration slice, then the final solve on fitting and calibration positions."""
    from ...heads import softcap
    from ..fit.solve import MAX_ITER, _concat, choose_reg
    from .objective import CalibrationLoss, choose_input_weight, solve_joint

    cached = cached_positions(context)
    train, calibration = cached.data.select(~cached.calibration), cached.data.select(cached.calibration)
    cap, free, reg = softcap(context.model), cached.free, context.config.options_for("fit").reg
    report: dict[str, Any] = {"output_weight": options.output_weight, **cached.facts(context.words)}
    rows, final = start, train
    if reg is None:
        if calibration.hidden.shape[0] == 0:
            raise InvalidInputError("no calibration positions to choose fit_reg on: give more text, or set fit_reg")
        reg, rows, report["reg_path"] = choose_reg(train, calibration, start, start, free, cap, context.progress)
        final = _concat(train, calibration)
    ratio = None if options.input_weight is None else options.input_weight / options.output_weight
    if ratio is None:
        distill = context.config.options_for(Distill.name)
        windows = [w for w in context.windows(distill.context_tokens, distill.window) if w.calibration]
        loss = CalibrationLoss(context.model, calibration, windows, anchor, context.n_old, cap, context.config.seed,
                               distill.cache_budget)
        ratio, rows, report["input_weight_path"] = choose_input_weight(
            train, rows, start, anchor, reg, free=free, cap=cap, score=loss)
        final = _concat(train, calibration)
    rows = solve_joint(final, rows, start, anchor, reg, ratio, free=free, cap=cap, max_iter=MAX_ITER)
    report.update({"reg": reg, "input_weight": "inf" if math.isinf(ratio) else ratio * options.output_weight})
    return rows, report
