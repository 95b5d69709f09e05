"""The `joint` strategy's maths: one row per new word that is both its input and its output row.

For new rows E [k, d] of a tied model, with A the distilled rows (the minimizer of the input signal: the model
reading e_w reproduces its states on the word's old pieces; Token Distillation, Dobler et al. 2026) and mu the
mean row (Hewitt 2021), the joint objective is

    J(E) = w_out * [CE(E) + reg/2 sum_j |e_j - mu|^2] + w_in/2 sum_j pi_j |e_j - a_j|^2

where CE(E) is `fit`'s weighted cross-entropy of the expanded model on cached states (fit/solve.py) and the
second term is a quadratic model of the distillation loss around its minimizer A. The model reads word j at
each of its occurrences, so that loss is a sum over occurrences: pi_j is word j's share of the train
occurrences times k (mean 1; `occurrence_share`). With one pull for every word, frequent words were pulled as
weakly as rare ones, and the one weight chosen had to suit both (gemma3-270m, 1,000 words: 0.50 points behind
the untied pair, BENCHMARKS.md). ``input_pull="uniform"`` keeps pi_j = 1. The two pulls add up to one per row:
J / w_out = CE(E) + sum_j s_j/2 |e_j - c_j|^2 + const with s_j = reg + r pi_j, c_j = (reg mu + r pi_j a_j) / s_j
and r = w_in / w_out, so J is convex and solved exactly by fit's L-BFGS (solve_rows). w_in = 0 gives `fit`;
w_out = 0 gives A.

The trade-off w_in is chosen on the calibration slice by what the tied model actually loses there, in nats per
position: CE on the cached calibration states (the output signal) plus, on calibration occurrence windows, the
change in the next tokens' loss when the model reads E instead of A (the input signal, with E also in the head).

Left out: running the model for the cached states (learning/), the distillation itself (strategies/distill/).
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor, nn

from ...heads import head_logits
from ..distill.maths import Distiller
from ..fit.solve import PATH_MAX_ITER, FitData, mean_nll, objective, solve_rows

# Input weights tried, strongest first (the distilled rows themselves come before them, 0 = `fit` after them);
# each solve starts from the previous one's rows, like fit's REG_PATH. The walk starts at 1e-2 and goes up
# (STRONGER) only when 1e-2 is the best of the way down: SmolLM2 (100 words) is best at 1e-3, so starting
# higher only cost solves (issue #15's 1.2x cost target); gemma3-270m was best at 1e-2 on the way down.
INPUT_WEIGHT_PATH = (1e-2, 1e-3, 1e-4, 1e-5, 1e-6, 0.0)
STRONGER = (1e-1, 1.0, 10.0)
# Calibration windows scored for the input signal: each costs a few positions x vocabulary logits per try.
MAX_CALIBRATION_WINDOWS = 256


def occurrence_share(data: FitData, k: int) -> Tensor:
    """pi [k]: each word's share of the weighted occurrences in ``data`` (new targets) times k, so mean 1.
    E.g. occurrences [3, 1, 0, 0] give [3, 1, 0, 0]; none at all give ones."""
    counts = torch.zeros(k).index_add_(0, data.target.clamp_min(0), data.weight * (data.target >= 0))
    total = counts.sum()
    return counts * (k / total) if total > 0 else torch.ones(k)


def pull(mean_row: Tensor, anchor: Tensor, reg: float, ratio: float, share: Tensor | None = None
         ) -> tuple[Tensor, float | Tensor]:
    """(center [k, d], strength: a float, or [k, 1] with ``share``) of the one L2 pull per row equal to
    reg/2 |e_j - mu|^2 + ratio pi_j/2 |e_j - a_j|^2 up to a constant, ratio = w_in / w_out, pi = ``share``
    (None: ones). E.g. reg 1, ratio 1, pi_j 1: center (mu + a_j) / 2, strength 2."""
    if ratio == 0:  # exactly fit's pull, so that w_in = 0 gives fit's rows bit for bit
        return mean_row, reg
    weight = ratio if share is None else ratio * share.unsqueeze(1)
    strength = reg + weight
    center = (reg * mean_row + weight * anchor) / strength
    if share is not None:  # a word never seen (pi_j 0) with reg 0 has no pull at all: centre it on mu
        center = torch.where(strength > 0, center, mean_row)
    return center, strength


def joint_objective(rows: Tensor, data: FitData, mean_row: Tensor, anchor: Tensor, reg: float, input_weight: float,
                    output_weight: float, cap: float | None = None, share: Tensor | None = None) -> Tensor:
    """J(E) (0-d tensor), as solve_joint minimizes it."""
    squares = (rows - anchor).pow(2) if share is None else share.unsqueeze(1) * (rows - anchor).pow(2)
    return output_weight * objective(rows, data, mean_row, reg, cap) + 0.5 * input_weight * squares.sum()


def solve_joint(data: FitData, start: Tensor, mean_row: Tensor, anchor: Tensor, reg: float, ratio: float, *,
                free: Tensor, cap: float | None, max_iter: int, share: Tensor | None = None) -> Tensor:
    """argmin_E J(E) [k, d] for ratio = w_in / w_out (math.inf: the anchor rows) and occurrence shares
    ``share`` (None: one pull for all); rows not ``free`` stay at ``start``."""
    if math.isinf(ratio):
        return torch.where(free.unsqueeze(1), anchor, start)
    center, strength = pull(mean_row, anchor, reg, ratio, share)
    return solve_rows(data, start, center, strength, free=free, cap=cap, max_iter=max_iter)


def choose_input_weight(train: FitData, start: Tensor, mean_row: Tensor, anchor: Tensor, reg: float, *,
                        free: Tensor, cap: float | None, score: Callable[[Tensor], float],
                        share: Tensor | None = None) -> tuple[float, Tensor, list[dict[str, float | str]]]:
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
            rows = solve_joint(train, rows, mean_row, anchor, reg, ratio, free=free, cap=cap, max_iter=PATH_MAX_ITER,
                               share=share)
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

    def __init__(self, model: nn.Module, calibration: FitData, windows: list, anchor: Tensor, n_old: int,
                 cap: float | None, seed: int, cache_budget: int | None = None):
        self.model, self.calibration, self.cap, self.n_old = model, calibration, cap, n_old
        windows = _at_most(windows, MAX_CALIBRATION_WINDOWS, seed)
        self.distiller = Distiller(model, windows, n_old, cache_budget) if windows else None
        self.omega = window_weights(calibration, [w.word for w in windows], anchor.shape[0])
        self.read_anchor = [self._states(anchor, i) for i in range(self._batches())]
        old = model.get_output_embeddings()
        self.old_rows = old.weight[:n_old].detach().to(torch.float32)
        self.old_bias = old.bias[:n_old].detach().to(torch.float32) if getattr(old, "bias", None) is not None else None

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
        """[B] summed -log p of each window's tokens after the word, from the head's input ``states`` [B, T, d]."""
        at = [(b, p) for b, w in enumerate(windows) for p in range(len(w.student) - 1)]
        if not at:
            return torch.zeros(len(windows))
        owner, position = (torch.tensor(c) for c in zip(*at))
        hidden = states[owner, position]
        old = head_logits(self.model, hidden, self.old_rows, self.old_bias)
        new = head_logits(self.model, hidden, rows)
        target = torch.tensor([windows[b].student[p + 1] for b, p in at])
        nll = torch.logaddexp(old.logsumexp(1), new.logsumexp(1)) - old.gather(1, target[:, None]).squeeze(1)
        return torch.zeros(len(windows)).index_add_(0, owner, nll)

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
