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

The pull toward A models the input signal poorly away from A. With input_step (off by default: measured, it
buys little on held-out text), the solved rows then take one step down the input signal's true gradient (the next
tokens' loss when the model reads e_w, on distill's fitting windows), its length given or chosen on the
calibration slice (objective.py).

Needs: the domain sample, its occurrence windows, and its states read with the distilled rows. Options of the
two signals are distill's and fit's own (distill_epochs, fit_reg, ...); joint adds the two weights.

Left out: an output bias (the shared row of a tied head with a bias keeps its mean entry); sampling and running
the model (learning/), writing rows (rows/).
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
    from ..fit.solve import FitData


@dataclass(frozen=True)
class JointOptions:
    """Options of `joint`: the weights of its two signals (distill's and fit's options set each signal)."""

    # None: chosen on the calibration slice (the distilled rows, then a path of decades down to 0).
    input_weight: float | None = opt(None, "joint: weight of the input signal (pull toward the distilled row); "
                                           "0 gives fit's row (default: chosen on a calibration slice)")
    # 0 keeps the distilled rows (distill's on a shared row); the scale of J does not change its minimizer.
    output_weight: float = opt(1.0, "joint: weight of the output signal (fit's loss and pull); 0 gives distill's row")
    # 0 by default: on gemma3-270m with 1,000 words the step took a quarter of the tied gap on the calibration
    # slice but 0.02 points on the held-out split, for 11% more time (BENCHMARKS.md). None: chosen on the
    # calibration slice (objective.INPUT_STEP_PATH, no step included).
    input_step: float | None = opt(0.0, "joint: length of a step down the input signal's true gradient, as a share "
                                        "of |row - mean row| (None: chosen on a calibration slice; default 0: none)")

    def __post_init__(self) -> None:
        if self.input_weight is not None and not self.input_weight >= 0:
            raise InvalidInputError(f"joint_input_weight must be >= 0 or None (chosen on the calibration slice), "
                             f"got {self.input_weight}")
        if not self.output_weight >= 0:
            raise InvalidInputError(f"joint_output_weight must be >= 0, got {self.output_weight}")
        if self.input_step is not None and not self.input_step >= 0:
            raise InvalidInputError(f"joint_input_step must be >= 0 or None (chosen on the calibration slice), "
                                    f"got {self.input_step}")
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
    request = RowRequest(pieces=context.plan.pieces, tokens_before=context.tokens_before,
                         generator=torch.Generator().manual_seed(context.config.seed))
    learned = context.learned(Distill(), Distill().rows(weight, request))
    return learned.rows, learned.report


def fitted_rows(context: "LearnContext", start: Tensor, anchor: Tensor, options: JointOptions
                ) -> tuple[Tensor, dict[str, Any]]:
    """The rows minimizing J on states read with ``anchor`` (context.input_rows), mirroring fit_rows: reg and
    the input weight chosen on the calibration slice, then the final solve on fitting and calibration positions;
    with options.input_step, then the step down the true input gradient (stepped)."""
    from ...heads import softcap
    from ..fit.solve import MAX_ITER, PATH_MAX_ITER, _concat, choose_reg
    from .objective import choose_input_weight, input_step, solve_joint

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
    stepping = options.input_step != 0 and ratio != 0  # input weight 0 is fit's row exactly
    windows, loss = calibration_loss(context, calibration, anchor, cap, choosing=ratio is None,
                                     stepping=stepping, choose_step=options.input_step is None)
    unstepped = None
    if ratio is None:
        if loss is None:
            raise InvalidInputError("no calibration positions to choose joint_input_weight on: give more text, "
                                    "or set joint_input_weight")
        ratio, rows, report["input_weight_path"] = choose_input_weight(
            train, rows, start, anchor, reg, free=free, cap=cap, score=loss)
        unstepped = min(p["calibration_nats"] for p in report["input_weight_path"])
        final = _concat(train, calibration)
    step, gradient = 0.0, None
    if stepping and not math.isinf(ratio) and (options.input_step or loss is not None):
        if "input_weight_path" not in report:  # a given weight: the step starts from its rows on the train split
            rows = solve_joint(train, rows, start, anchor, reg, ratio, free=free, cap=cap, max_iter=PATH_MAX_ITER)
        gradient, step, facts = stepped(context, train, rows, start, free, windows, options, loss, unstepped)
        report.update(facts)
    rows = solve_joint(final, rows, start, anchor, reg, ratio, free=free, cap=cap, max_iter=MAX_ITER)
    if gradient is not None:
        rows = input_step(rows, gradient, start, step, free)
    report.update({"reg": reg, "input_weight": "inf" if math.isinf(ratio) else ratio * options.output_weight,
                   "input_step": step})
    return rows, report


def calibration_loss(context: "LearnContext", calibration: "FitData", anchor: Tensor, cap: float | None, *,
                     choosing: bool, stepping: bool, choose_step: bool) -> tuple[list, Any]:
    """(the sample's occurrence windows, objective.CalibrationLoss or None): the windows where the input weight
    is ``choosing`` or the rows are ``stepping``, the score where something is chosen on calibration positions."""
    from .objective import CalibrationLoss

    distill = context.config.options_for(Distill.name)
    windows = context.windows(distill.context_tokens, distill.window) if choosing or stepping else []
    if calibration.hidden.shape[0] == 0 or not (choosing or (stepping and choose_step)):
        return windows, None
    return windows, CalibrationLoss(context.model, calibration, [w for w in windows if w.calibration], anchor,
                                    context.tokens_before, cap, context.config.seed, distill.cache_budget)


def stepped(context: "LearnContext", train: "FitData", rows: Tensor, mean_row: Tensor, free: Tensor, windows: list,
            options: JointOptions, loss: Any, unstepped: float | None) -> tuple[Tensor, float, dict[str, Any]]:
    """(g [k, d], share, report facts): the true input gradient at the walk's ``rows`` on distill's fitting
    windows (each scored window standing for its share of the train occurrences), and the step's share of
    |row - mean row|: options.input_step, or chosen on the calibration slice by ``loss``."""
    from ...learning.windows import select_windows
    from ..distill import contexts_per_word
    from .objective import choose_input_step, input_gradient, window_weights

    began = time.perf_counter()
    distill = context.config.options_for(Distill.name)
    per_word = contexts_per_word(context.k, distill, context.config.sampling.min_occurrences)
    fitting = select_windows([w for w in windows if not w.calibration], per_word)
    omega = window_weights(train, [w.word for w in fitting], rows.shape[0])
    gradient = input_gradient(context.model, fitting, rows, omega, context.tokens_before, free=free,
                              cache_budget=distill.cache_budget, progress=context.progress)
    facts: dict[str, Any] = {"input_gradient_windows": len(fitting)}
    share = options.input_step
    if share is None:
        share, facts["input_step_path"] = choose_input_step(
            rows, gradient, mean_row, free, loss, loss(rows) if unstepped is None else unstepped)
    facts["input_step_seconds"] = time.perf_counter() - began
    return gradient, share, facts
