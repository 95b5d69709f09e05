"""The `distill` strategy's maths: input rows that reproduce the original model's states on the word's pieces.

For an occurrence of new token j in the domain text, the student reads [start, left context, j, next tokens]
and the teacher (the same frozen model) reads [start, left context, pieces of j, next tokens]. Only the new
input rows are trained, so that the student's hidden states at j and at the next tokens match the teacher's
at the last piece and the same next tokens, in a few layers (Token Distillation, Dobler et al. 2026).
Windows stop at any other new word, so a window holds exactly one. All words train together (Adam); a
calibration share of the windows picks the epoch with the lowest error.

Left out: sampling the text and finding the windows (learning/), writing rows (resize.py).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ...heads import embed_with_rows, embedding_scale
from ...learning.windows import Window

# Layers matched, as fractions of the depth (1.0: the final normalized state, the head's input).
LAYER_FRACTIONS = (0.5, 0.75, 1.0)
BATCH_WINDOWS = 32
# Adam step size as a multiple of the old input rows' standard deviation.
LR_SCALE = 0.1


def _padded(seqs: list[list[int]], device: torch.device, left: bool = False) -> tuple[Tensor, Tensor]:
    """ids and mask [B, T] on ``device``, padded on the right (or the left)."""
    width = max(map(len, seqs))
    ids = torch.zeros(len(seqs), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, s in enumerate(seqs):
        span = slice(width - len(s), width) if left else slice(0, len(s))
        ids[i, span] = torch.tensor(s, dtype=torch.long)
        mask[i, span] = 1
    return ids.to(device), mask.to(device)


@dataclass
class Batch:
    """Windows read together: the prefix's key/value cache (computed once, no gradient) and the tails."""

    windows: list[Window]
    cache: Any
    prefix_mask: Tensor
    calibration: bool


def layer_states(model: nn.Module, embeds: Tensor, mask: Tensor, positions: Tensor, cache: Any) -> list[Tensor]:
    """Hidden states [B, T, d] of a tail at LAYER_FRACTIONS of the depth, after a cached prefix; the last is
    the head's input. ``positions`` are explicit, so left-padded prefixes cannot shift them."""
    out = model.base_model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions,
                           past_key_values=cache, output_hidden_states=True, use_cache=True)
    depth = len(out.hidden_states) - 1
    picked = [out.hidden_states[max(1, round(f * depth))] for f in LAYER_FRACTIONS if f < 1.0]
    return [*picked, out.last_hidden_state]


def _gather(states: list[Tensor], positions: list[list[int]]) -> list[Tensor]:
    """For each layer, the matched states of a batch, concatenated: [M, d]."""
    rows = torch.tensor([i for i, ps in enumerate(positions) for _ in ps])
    cols = torch.tensor([p for ps in positions for p in ps])
    return [s[rows.to(s.device), cols.to(s.device)].to(torch.float32) for s in states]


@dataclass
class DistillResult:
    rows: Tensor
    report: dict[str, Any]


class Distiller:
    """Distill new input rows [k, d] for ``windows`` on a frozen model that lacks them. The prefixes are
    read once: each step only runs the few tail tokens, which is where the gradient is."""

    def __init__(self, model: nn.Module, windows: list[Window], n_old: int):
        self.model, self.n_old = model, n_old
        self.device = model.get_input_embeddings().weight.device  # Accelerate's hooks move inputs on from here
        self.scale = embedding_scale(model.get_input_embeddings())
        self.batches = []
        for side in (False, True):  # a batch holds one side, so that its error is that side's
            group = sorted((w for w in windows if w.calibration == side), key=lambda w: len(w.prefix))
            self.batches += [self._batch(group[i : i + BATCH_WINDOWS], side) for i in range(0, len(group), BATCH_WINDOWS)]
        self.targets = [self._teacher(b) for b in self.batches]

    @torch.no_grad()
    def _batch(self, windows: list[Window], side: bool) -> Batch:
        ids, mask = _padded([w.prefix for w in windows], self.device, left=True)
        positions = (mask.cumsum(1) - 1).clamp_min(0)
        out = self.model.base_model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True)
        return Batch(windows, out.past_key_values, mask, side)

    def _tail_states(self, batch: Batch, tails: list[list[int]], rows: Tensor | None) -> list[Tensor]:
        ids, mask = _padded(tails, self.device)
        positions = batch.prefix_mask.sum(1, keepdim=True) + torch.arange(ids.shape[1], device=self.device)
        embeds = (self.model.get_input_embeddings()(ids) if rows is None
                  else embed_with_rows(self.model, ids, rows, self.n_old, self.scale))
        full_mask = torch.cat([batch.prefix_mask, mask], 1)
        return layer_states(self.model, embeds, full_mask, positions, copy.deepcopy(batch.cache))

    def final_states(self, rows: Tensor, index: int) -> Tensor:
        """The head's input [B, T, d] (float32) on batch ``index``'s student tails, reading new input rows [k, d]
        (joint scores the next tokens with it)."""
        batch = self.batches[index]
        return self._tail_states(batch, [w.student for w in batch.windows], rows)[-1].to(torch.float32)

    @torch.no_grad()
    def _teacher(self, batch: Batch) -> list[Tensor]:
        states = self._tail_states(batch, [w.teacher for w in batch.windows], None)
        return _gather(states, [w.teacher_positions for w in batch.windows])

    def loss(self, rows: Tensor, index: int) -> Tensor:
        """Mean relative squared error of batch ``index`` under new input rows [k, d]."""
        batch = self.batches[index]
        states = self._tail_states(batch, [w.student for w in batch.windows], rows)
        student = _gather(states, [w.student_positions for w in batch.windows])
        # Relative error per state: a few positions carry huge activations (attention sinks), and an absolute
        # error would let them drown the rest.
        errors = [((s - t).pow(2).sum(1) / t.pow(2).sum(1).clamp_min(1e-12)).mean()
                  for s, t in zip(student, self.targets[index])]
        return torch.stack(errors).mean()

    def error(self, rows: Tensor, calibration: bool) -> float:
        """Mean error over the fitting (or calibration) windows."""
        with torch.no_grad():
            scores = [(self.loss(rows, i).item(), len(b.windows)) for i, b in enumerate(self.batches)
                      if b.calibration == calibration]
        return sum(s * n for s, n in scores) / max(1, sum(n for _, n in scores))


def distill_rows(model: nn.Module, windows: list[Window], start: Tensor, n_old: int, *, free: Tensor,
                 epochs: int, seed: int, progress: bool = True) -> DistillResult:
    """New input rows [k, d], starting from ``start``; rows where ``free`` is False are not trained."""
    began = time.perf_counter()
    frozen = [p for p in model.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    try:
        distiller = Distiller(model, windows, n_old)
        result = _train(distiller, start, free, epochs, seed, progress)
    finally:
        for p in frozen:
            p.requires_grad_(True)
    result.report.update({"windows": len(windows), "seconds": time.perf_counter() - began})
    return result


def _train(distiller: Distiller, start: Tensor, free: Tensor, epochs: int, seed: int, progress: bool) -> DistillResult:
    reference = distiller.model.get_input_embeddings().weight
    lr = LR_SCALE * reference[: distiller.n_old].detach().to(torch.float32).std().item()
    rows = start.detach().clone().to(torch.float32).requires_grad_(True)
    optimizer = torch.optim.Adam([rows], lr=lr)
    generator = torch.Generator().manual_seed(seed)
    fitting = [i for i, b in enumerate(distiller.batches) if not b.calibration]
    # The epoch is chosen on calibration windows; without any, on the training error itself.
    judge = "calibration_error" if len(fitting) < len(distiller.batches) else "training_error"
    history = [{"epoch": 0, "training_error": distiller.error(rows, False) if judge == "training_error" else None,
                "calibration_error": distiller.error(rows, True)}]
    best = (history[0][judge], rows.detach().clone(), 0)
    for epoch in tqdm(range(1, epochs + 1), desc="distilling input rows", disable=not progress):
        losses = []
        for i in torch.randperm(len(fitting), generator=generator).tolist():
            optimizer.zero_grad()
            with torch.enable_grad():
                loss = distiller.loss(rows, fitting[i])
                loss.backward()
            losses.append(loss.item())
            rows.grad[~free] = 0  # rarely seen words keep their fallback rows
            optimizer.step()
        history.append({"epoch": epoch, "training_error": sum(losses) / len(losses),
                        "calibration_error": distiller.error(rows, True)})
        if history[-1][judge] < best[0]:
            best = (history[-1][judge], rows.detach().clone(), epoch)
    return DistillResult(best[1], {"history": history, "best_epoch": best[2], "lr": lr})
