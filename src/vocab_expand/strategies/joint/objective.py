"""The `joint` strategy's maths: one row per new word that is both its input and its output row.

For new rows E [k, d] of a tied model, with A the distilled rows (the minimizer of the input signal: the model
reading e_w reproduces its states on the word's old pieces; Token Distillation, Dobler et al. 2026) and mu the
mean row (Hewitt 2021), the joint objective is

    J(E) = w_out * [CE(E) + reg/2 sum_j |e_j - mu|^2] + w_in/2 sum_j |e_j - a_j|^2

where CE(E) is `fit`'s weighted cross-entropy of the expanded model on cached states (fit/solve.py) and the
second term is a quadratic model of the distillation loss around its minimizer A. The two pulls add up to one:
J / w_out = CE(E) + s/2 |E - c|^2 + const with s = reg + w_in / w_out and c = (reg mu + (w_in / w_out) A) / s,
so J is convex and solved exactly by fit's L-BFGS (solve_rows). w_in = 0 gives `fit`; w_out = 0 gives A.

The trade-off w_in is chosen on the calibration slice by what the tied model actually loses there, in nats per
position: CE on the cached calibration states (the output signal) plus, on calibration occurrence windows, the
change in the next tokens' loss when the model reads E instead of A (the input signal, with E also in the head).

The pull toward A is a poor model of that change away from A: on gemma3-270m with 1,000 words its gradient at
the solved rows is nearly orthogonal to the true one (cosine 0.02). With joint_input_step (off by default) the solved
rows then take one step down the true input gradient, the next tokens' loss on the fitting windows when the model
reads E (head held at E), E - alpha g, its length given or chosen on the calibration slice by the same score
(INPUT_STEP_PATH, 0 included). Measured there it takes a quarter of the tied gap on calibration, little held out.

Left out: running the model for the cached states (learning/), the distillation itself (strategies/distill/).
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ...heads import head_logits
from ..distill.maths import Distiller, frozen
from ..fit.solve import PATH_MAX_ITER, FitData, mean_nll, objective, solve_rows

# Input weights tried, strongest first (the distilled rows themselves come before them, 0 = `fit` after them);
# each solve starts from the previous one's rows, like fit's REG_PATH. The walk starts at 1e-2 and goes up
# (STRONGER) only when 1e-2 is the best of the way down: SmolLM2 (100 words) is best at 1e-3, so starting
# higher only cost solves (issue #15's 1.2x cost target); gemma3-270m was best at 1e-2 on the way down.
INPUT_WEIGHT_PATH = (1e-2, 1e-3, 1e-4, 1e-5, 1e-6, 0.0)
STRONGER = (1e-1, 1.0, 10.0)
# Calibration windows scored for the input signal: each costs a few positions x vocabulary logits per try.
MAX_CALIBRATION_WINDOWS = 256
# Lengths of the step down the true input gradient, as shares of |E - mean row| over the words it moves, shortest
# first, walked until the calibration score rises (0, no step, is scored first). gemma3-270m, 1,000 words: best
# near 1.2% (calibration 3.8480 -> 3.8446 nats per position; 4% gives 3.908).
INPUT_STEP_PATH = (0.0025, 0.005, 0.01, 0.02, 0.04, 0.08)


def pull(mean_row: Tensor, anchor: Tensor, reg: float, ratio: float) -> tuple[Tensor, float]:
    """(center [k, d], strength) of the one L2 pull equal to reg/2 |E - mu|^2 + ratio/2 |E - A|^2 up to a
    constant, ratio = w_in / w_out. E.g. reg 1, ratio 1: center (mu + A) / 2, strength 2."""
    if ratio == 0:  # exactly fit's pull, so that w_in = 0 gives fit's rows bit for bit
        return mean_row, reg
    strength = reg + ratio
    return (reg * mean_row + ratio * anchor) / strength, strength


def joint_objective(rows: Tensor, data: FitData, mean_row: Tensor, anchor: Tensor, reg: float, input_weight: float,
                    output_weight: float, cap: float | None = None) -> Tensor:
    """J(E) (0-d tensor), as solve_joint minimizes it."""
    return (output_weight * objective(rows, data, mean_row, reg, cap)
            + 0.5 * input_weight * (rows - anchor).pow(2).sum())


def solve_joint(data: FitData, start: Tensor, mean_row: Tensor, anchor: Tensor, reg: float, ratio: float, *,
                free: Tensor, cap: float | None, max_iter: int) -> Tensor:
    """argmin_E J(E) [k, d] for ratio = w_in / w_out (math.inf: the anchor rows); rows not ``free`` stay at
    ``start``."""
    if math.isinf(ratio):
        return torch.where(free.unsqueeze(1), anchor, start)
    center, strength = pull(mean_row, anchor, reg, ratio)
    return solve_rows(data, start, center, strength, free=free, cap=cap, max_iter=max_iter)


def choose_input_weight(train: FitData, start: Tensor, mean_row: Tensor, anchor: Tensor, reg: float, *,
                        free: Tensor, cap: float | None, score: Callable[[Tensor], float]
                        ) -> tuple[float, Tensor, list[dict[str, float | str]]]:
    """(w_in / w_out, its rows, the path): the distilled rows, then INPUT_WEIGHT_PATH with warm starts until
    the calibration ``score`` (nats per position) rises, then STRONGER the same way if the first weight was the
    best; the lowest score wins."""
    anchor_rows = solve_joint(train, start, mean_row, anchor, reg, math.inf, free=free, cap=cap, max_iter=0)
    path: list[dict[str, float | str]] = [{"input_weight": "inf", "calibration_nats": score(anchor_rows)}]
    best = (path[0]["calibration_nats"], math.inf, anchor_rows)

    def walk(ratios: tuple[float, ...], rows: Tensor) -> None:
        nonlocal best
        last = math.inf
        for ratio in ratios:
            rows = solve_joint(train, rows, mean_row, anchor, reg, ratio, free=free, cap=cap, max_iter=PATH_MAX_ITER)
            value = score(rows)
            path.append({"input_weight": ratio, "calibration_nats": value})
            if value < best[0]:
                best = (value, ratio, rows)
            if value > last:
                return  # risen: further along, the pull only loses more
            last = value

    walk(INPUT_WEIGHT_PATH, anchor_rows)
    if best[1] == INPUT_WEIGHT_PATH[0]:
        walk(STRONGER, best[2])
    return best[1], best[2], path


class CalibrationLoss:
    """What the tied model loses on the calibration slice with new rows E, in nats per position: the output
    signal on cached calibration states (read with the anchor rows), plus the input signal measured on
    calibration windows, sum_w omega_w [nll(read E) - nll(read A)] of the tokens after the word, both with E
    in the head. omega_w (window_weights): the word's weighted calibration occurrences over its scored windows,
    scaled up by the share of words left without a window, so the windows stand for every calibration
    occurrence. ``cache_budget``: distill's, for the windows' prefix caches (Distiller)."""

    def __init__(self, model: nn.Module, calibration: FitData, windows: list, anchor: Tensor, tokens_before: int,
                 cap: float | None, seed: int, cache_budget: int | None = None):
        self.model, self.calibration, self.cap, self.tokens_before = model, calibration, cap, tokens_before
        windows = _at_most(windows, MAX_CALIBRATION_WINDOWS, seed)
        self.distiller = Distiller(model, windows, tokens_before, cache_budget, teacher=False, read_ahead=False) if windows else None
        self.omega = window_weights(calibration, [w.word for w in windows], anchor.shape[0])
        self.read_anchor = [self._states(anchor, i) for i in range(self._batches())]
        self.old_rows, self.old_bias = old_head(model, tokens_before)

    def _batches(self) -> int:
        return len(self.distiller.batches) if self.distiller else 0

    def _states(self, rows: Tensor, index: int) -> Tensor:
        return self.distiller.final_states(rows, index)

    def input_nats(self, rows: Tensor) -> float:
        """sum_w omega_w [nll(read rows) - nll(read anchor)], head with ``rows`` in both."""
        total = 0.0
        for i in range(self._batches()):
            windows = self.distiller.batches[i].windows
            change = self._tail_nll(self._states(rows, i), windows, rows) - self._tail_nll(self.read_anchor[i], windows, rows)
            total += float((self.omega[[w.word for w in windows]] * change).sum())
        return total

    def _tail_nll(self, states: Tensor, windows: list, rows: Tensor) -> Tensor:
        return tail_nll(self.model, states, windows, rows, (self.old_rows, self.old_bias))

    @torch.no_grad()
    def __call__(self, rows: Tensor) -> float:
        return mean_nll(rows, self.calibration, self.cap) + self.input_nats(rows)


def window_weights(calibration: FitData, words: list[int], k: int) -> Tensor:
    """omega [k]: the weight of one scored window of each word, so that the scored windows stand for every
    calibration occurrence, per calibration position. A word with windows stands for its own occurrences; the
    occurrences of words left without one (more words than MAX_CALIBRATION_WINDOWS) are shared out over the
    scored ones in proportion, as the windows are a uniform sample of all occurrences (before, they were left
    out: 1,000 words on 256 windows undercounted the input signal). E.g. occurrences [3, 1, 2] with windows for
    words 0, 0, 1: each of word 0's counts 3/2 x 6/4, word 1's 1 x 6/4, per calibration position."""
    occurrences = torch.zeros(k).index_add_(0, calibration.target.clamp_min(0),
                                            calibration.weight * (calibration.target >= 0))
    scored = torch.bincount(torch.tensor(words, dtype=torch.long), minlength=k)
    represented = occurrences[scored > 0].sum()
    share = occurrences.sum() / represented if represented > 0 else torch.tensor(0.0)
    return torch.where(scored > 0, occurrences / scored.clamp_min(1) * share / calibration.weight.sum(), 0.0)


def _at_most(windows: list, limit: int, seed: int) -> list:
    """At most ``limit`` windows, a seeded random subset in the original order."""
    if len(windows) <= limit:
        return windows
    keep = torch.randperm(len(windows), generator=torch.Generator().manual_seed(seed))[:limit].sort().values
    return [windows[i] for i in keep.tolist()]


def old_head(model: nn.Module, tokens_before: int) -> tuple[Tensor, Tensor | None]:
    """The head's old rows [tokens_before, d] and bias [tokens_before] (None without one), float32, detached."""
    head = model.get_output_embeddings()
    bias = head.bias[:tokens_before].detach().to(torch.float32) if getattr(head, "bias", None) is not None else None
    return head.weight[:tokens_before].detach().to(torch.float32), bias


def tail_nll(model: nn.Module, states: Tensor, windows: list, rows: Tensor, old: tuple[Tensor, Tensor | None]
             ) -> Tensor:
    """[B] summed -log p of each window's tokens after the word, from the head's input ``states`` [B, T, d],
    with new head rows [k, d] after the ``old`` head (old_head); differentiable in ``states`` and ``rows``."""
    at = [(b, p) for b, w in enumerate(windows) for p in range(len(w.student) - 1)]
    if not at:
        return torch.zeros(len(windows))
    owner, position = (torch.tensor(c) for c in zip(*at))
    hidden = states[owner, position]
    old_logits = head_logits(model, hidden, *old)
    new = head_logits(model, hidden, rows)
    target = torch.tensor([windows[b].student[p + 1] for b, p in at])
    nll = torch.logaddexp(old_logits.logsumexp(1), new.logsumexp(1)) - old_logits.gather(1, target[:, None]).squeeze(1)
    return torch.zeros(len(windows)).index_add_(0, owner, nll)


def input_gradient(model: nn.Module, windows: list, rows: Tensor, omega: Tensor, tokens_before: int, *, free: Tensor,
                   cache_budget: int | None = None, progress: bool = False) -> Tensor:
    """g [k, d]: the gradient in the read rows of sum_w omega_w nll_w(the model reads ``rows``), the next tokens'
    loss on fitting ``windows`` with the head held at ``rows`` (the input signal itself, not the pull's model of
    it); zero where not ``free``. One student pass per batch of windows, each reading its prefix once."""
    distiller = Distiller(model, windows, tokens_before, cache_budget, teacher=False, read_ahead=False)
    old, held = old_head(model, tokens_before), rows.detach()
    param = rows.detach().clone().to(torch.float32).requires_grad_(True)
    with frozen(model), torch.enable_grad():
        for i in tqdm(range(len(distiller.batches)), desc="joint: input gradient", disable=not progress):
            batch = distiller.batches[i].windows
            loss = (omega[[w.word for w in batch]] * tail_nll(model, distiller.final_states(param, i), batch, held,
                                                              old)).sum()
            loss.backward()
    grad = param.grad if param.grad is not None else torch.zeros_like(param)
    return torch.where(free.unsqueeze(1), grad, 0.0)


def input_step(rows: Tensor, gradient: Tensor, mean_row: Tensor, share: float, free: Tensor) -> Tensor:
    """rows - alpha g [k, d], alpha such that the step is ``share`` of |rows - mean_row| over the ``free`` rows;
    e.g. |rows - mean| 10, |g| 2, share 0.01: alpha 0.05, a step of length 0.1."""
    length = (rows - mean_row)[free].norm()
    size = gradient.norm()
    if share == 0 or size == 0:
        return rows
    return rows - (share * length / size) * gradient


def choose_input_step(rows: Tensor, gradient: Tensor, mean_row: Tensor, free: Tensor, score: Callable[[Tensor], float],
                      unstepped: float) -> tuple[float, list[dict[str, float]]]:
    """(share, path): INPUT_STEP_PATH walked until the calibration ``score`` rises; ``unstepped`` is the score
    of ``rows`` (share 0), which wins unless a step does better."""
    path, best, last = [{"share": 0.0, "calibration_nats": unstepped}], (unstepped, 0.0), unstepped
    for share in INPUT_STEP_PATH:
        value = score(input_step(rows, gradient, mean_row, share, free))
        path.append({"share": share, "calibration_nats": value})
        if value < best[0]:
            best = (value, share)
        if value > last:
            break
        last = value
    return best[1], path
