"""The `fit` strategy's maths: new output rows that minimize the expanded model's loss on cached states.

For positions t with hidden state h_t (inputs already expanded, so h_t does not depend on the new output rows),
old log-partition log Z_t and target y_t, the loss of new rows R [k, d] is

    L(R) = sum_t w_t [logaddexp(log Z_t, logsumexp_j s_tj) - s_t(y_t)] / sum_t w_t + reg/2 sum_j |r_j - mu|^2

with s_tj = cap(h_t . r_j) and s_t(y) the old target logit when y is old. Without soft-capping it is convex
in R (log-sum-exp of affine maps minus an affine map, plus a convex penalty), so L-BFGS finds the optimum.
An output bias is one more coordinate: h gets a constant 1 and r the bias entry. reg -> infinity gives mu,
the mean row, whose KL is bounded by log(1 + k/n) (Hewitt). reg is chosen on a calibration slice.

Left out: sampling the text (learning/sampling.py), running the model (forward.py), writing rows (rows/).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ...errors import InvalidInputError
from ...heads import capped

# Candidate regularization strengths, strongest first: each solve starts from the previous one's rows.
REG_PATH = (1e-2, 1e-3, 1e-4, 1e-5, 1e-6, 1e-7)
HALF_DECADE = math.sqrt(10.0)
# Positions per chunk of the loss: [chunk x k] logits and their autograd copies stay small.
CHUNK_POSITIONS = 8192
MAX_ITER = 200
# Iterations of each warm-started solve on the regularization path (the chosen strength is solved to MAX_ITER).
PATH_MAX_ITER = 60
# Positions the solve keeps: every position whose target is a new token, and a weighted random share of
# the others, whose only role is the softmax-mass term (cost is positions x k x d per evaluation).
SOLVE_MAX_POSITIONS = 32_768


@dataclass
class FitData:
    """Cached positions. hidden [P, d]; log_z [P] over the old vocabulary; target [P] the new token's index
    (0..k-1) or -1 for an old target; target_logit [P] the old target's logit (unused where target >= 0);
    weight [P] importance weights."""

    hidden: Tensor
    log_z: Tensor
    target: Tensor
    target_logit: Tensor
    weight: Tensor

    def select(self, mask: Tensor) -> "FitData":
        return FitData(*(getattr(self, f)[mask] for f in self.__dataclass_fields__))

    def with_bias_column(self) -> "FitData":
        """The same data with a constant-1 column, so that a bias entry is one more coordinate of the rows."""
        ones = torch.ones(self.hidden.shape[0], 1, dtype=self.hidden.dtype)
        return FitData(torch.cat([self.hidden, ones], 1), self.log_z, self.target, self.target_logit, self.weight)


def thinned(data: FitData, part: Tensor, max_positions: int, seed: int) -> tuple[FitData, Tensor]:
    """(data, part [P] bool) with at most about ``max_positions`` positions: positions with a new target are
    all kept, the others with probability rho and weight / rho, so weighted sums stay unbiased."""
    is_new = data.target >= 0
    old = int((~is_new).sum())
    room = max_positions - int(is_new.sum())
    if old <= max(room, 0) or old == 0:
        return data, part
    rho = max(room, max_positions // 4) / old
    generator = torch.Generator().manual_seed(seed)
    keep = is_new | (torch.rand(len(is_new), generator=generator) < rho)
    weight = torch.where(is_new, data.weight, data.weight / rho)
    return FitData(data.hidden, data.log_z, data.target, data.target_logit, weight).select(keep), part[keep]


def nll(rows: Tensor, data: FitData, cap: float | None = None) -> Tensor:
    """Weighted sum over positions of -log p_new(target) (nats) for new output rows [k, d]: a 0-d tensor."""
    total = rows.new_zeros(())
    for start in range(0, data.hidden.shape[0], CHUNK_POSITIONS):
        total = total + _chunk_nll(rows, data, start, cap)
    return total


def _chunk_nll(rows: Tensor, data: FitData, start: int, cap: float | None) -> Tensor:
    stop = start + CHUNK_POSITIONS
    logits = capped(data.hidden[start:stop] @ rows.T, cap)
    log_z = torch.logaddexp(data.log_z[start:stop], torch.logsumexp(logits, dim=1))
    target = data.target[start:stop]
    is_new = target >= 0
    new_logit = logits.gather(1, target.clamp_min(0).unsqueeze(1)).squeeze(1)
    target_logit = torch.where(is_new, new_logit, data.target_logit[start:stop])
    return (data.weight[start:stop] * (log_z - target_logit)).sum()


def objective(rows: Tensor, data: FitData, mean_row: Tensor, reg: float, cap: float | None = None) -> Tensor:
    """L(R): weighted mean loss per position plus reg/2 sum_j |r_j - mu|^2."""
    return nll(rows, data, cap) / data.weight.sum() + 0.5 * reg * (rows - mean_row).pow(2).sum()


def solve_rows(data: FitData, start: Tensor, mean_row: Tensor, reg: float, *, free: Tensor | None = None,
               cap: float | None = None, max_iter: int = MAX_ITER) -> Tensor:
    """argmin_R L(R) [k, d] by L-BFGS from ``start``; rows where ``free`` [k] is False stay at ``start``."""
    free = torch.ones(start.shape[0], dtype=torch.bool) if free is None else free
    fixed = start.detach().clone()
    if not free.any():
        return fixed
    param = fixed[free].clone().requires_grad_(True)
    optimizer = torch.optim.LBFGS([param], lr=1.0, max_iter=max_iter, history_size=20,
                                  tolerance_grad=1e-10, tolerance_change=1e-12, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        optimizer.zero_grad()
        rows = fixed.index_put((free.nonzero().squeeze(1),), param)
        loss = objective(rows, data, mean_row, reg, cap)
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return fixed.index_put((free.nonzero().squeeze(1),), param.detach())


def mean_nll(rows: Tensor, data: FitData, cap: float | None = None) -> float:
    """Weighted mean -log p (nats per position) of ``data`` under new rows."""
    with torch.no_grad():
        return (nll(rows, data, cap) / data.weight.sum()).item()


@dataclass
class FitResult:
    rows: Tensor
    report: dict[str, Any]


def fit_rows(data: FitData, calibration: FitData, start: Tensor, mean_row: Tensor, *, free: Tensor,
             reg: float | None = None, cap: float | None = None, progress: bool = True) -> FitResult:
    """Fitted rows [k, d]. With reg None, walk REG_PATH (warm starts), keep the strength with the lowest
    calibration loss, then refit on fitting and calibration positions together."""
    began = time.perf_counter()
    report: dict[str, Any] = {}
    rows = start
    if reg is None:
        if not _any(calibration):
            raise InvalidInputError("no calibration positions to choose fit_reg on: give more text, or set fit_reg")
        report["calibration_nll_start"] = mean_nll(start, calibration, cap)
        reg, rows, report["reg_path"] = choose_reg(data, calibration, start, mean_row, free, cap, progress)
        report["calibration_nll_fitted"] = min(p["calibration_nll"] for p in report["reg_path"])
        data = _concat(data, calibration)
    rows = solve_rows(data, rows, mean_row, reg, free=free, cap=cap)
    report.update({"reg": reg, "seconds": time.perf_counter() - began})
    return FitResult(rows, report)


def choose_reg(data: FitData, calibration: FitData, start: Tensor, mean_row: Tensor, free: Tensor,
               cap: float | None, progress: bool) -> tuple[float, Tensor, list[dict[str, float]]]:
    """(reg, its rows, the path): REG_PATH walked with warm starts until the calibration loss has risen twice."""
    path, rows, best = [], start, (math.inf, REG_PATH[0], start)
    for value in tqdm(REG_PATH, desc="fitting output rows", disable=not progress):
        rows = solve_rows(data, rows, mean_row, value, free=free, cap=cap, max_iter=PATH_MAX_ITER)
        score = mean_nll(rows, calibration, cap)
        path.append({"reg": value, "calibration_nll": score})
        if score < best[0]:
            best = (score, value, rows)
        elif path[-2]["calibration_nll"] < score and len(path) > 2 and path[-3]["calibration_nll"] < path[-2]["calibration_nll"]:
            break  # risen twice: weaker pulls only overfit more
    for value in (best[1] * HALF_DECADE, best[1] / HALF_DECADE):  # refine between the decades around the best
        rows = solve_rows(data, best[2], mean_row, value, free=free, cap=cap, max_iter=PATH_MAX_ITER)
        score = mean_nll(rows, calibration, cap)
        path.append({"reg": value, "calibration_nll": score})
        if score < best[0]:
            best = (score, value, rows)
    return best[1], best[2], path


def _any(data: FitData) -> bool:
    return data.hidden.shape[0] > 0


def _concat(a: FitData, b: FitData) -> FitData:
    return FitData(*(torch.cat([getattr(a, f), getattr(b, f)]) for f in FitData.__dataclass_fields__))
