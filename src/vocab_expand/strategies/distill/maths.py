"""The `distill` strategy's maths: input rows that reproduce the original model's states on the word's pieces.

For an occurrence of new token j in the domain text, the student reads [start, left context, j, next tokens]
and the teacher (the same frozen model) reads [start, left context, pieces of j, next tokens]. Only the new
input rows are trained, so that the student's hidden states at j and at the next tokens match the teacher's
at the last piece and the same next tokens, in a few layers (Token Distillation, Dobler et al. 2026).
Windows stop at any other new word, so a window holds exactly one. All words train together (Adam); a
calibration share of the windows picks the epoch with the lowest error.

Memory: each step runs only the few tail tokens after a batch's prefix, reading the prefix's key/value cache.
Those caches are kept between steps up to a budget (bytes; by default half the free memory, at most half the
model's weights and 4 GiB: 1,000 words cost about 6 GB on a 135M model and 130 GB on a 7B one); a batch beyond
it reads its prefix again, without gradient, each time it is used, and frees it after. A kept cache is never
copied: each pass gets its own cache object over the stored tensors, which the pass extends with torch.cat and
never writes.

Left out: sampling the text and finding the windows (learning/), writing rows (rows/).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import copy
import time
from dataclasses import dataclass
from typing import Any, Iterator

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm
from transformers.cache_utils import DynamicCache, DynamicLayer, DynamicSlidingWindowLayer

from ...heads import embed_with_rows, embedding_scale
from ...learning.windows import Window
from ...memory import available_bytes, tensor_bytes

# Layers matched, as fractions of the depth (1.0: the final normalized state, the head's input).
LAYER_FRACTIONS = (0.5, 0.75, 1.0)
BATCH_WINDOWS = 32
# Adam step size as a multiple of the old input rows' standard deviation.
LR_SCALE = 0.1
# Default budget of kept prefix caches: this share of the memory free when distillation starts (the rest is for
# the tail passes, their gradients and what follows, e.g. fit's cached states), and never more than CACHE_CAP:
# with the forward pass's logits (forward.logit_budget) it keeps a big model's peak within its weights + 8 GB
# (issue #14); 1,000 words on SmolLM2-135M (about 6 GB of caches) then read a third of their prefixes again.
CACHE_SHARE = 0.5
CACHE_CAP = 4 * 2**30
# ... and never more than this multiple of the model's weights, so the overhead scales with the model (a 1B bf16
# body on the CPU stays within 2.5x its weights; SmolLM2 in float32 keeps about half of 100 words' caches).
CACHE_WEIGHTS_SHARE = 0.5
# Cache layers whose update appends with torch.cat and assigns the result (transformers 5's DynamicCache, full
# and sliding-window attention): a shallow copy of one grows on its own, leaving the stored tensors as they were.
# Caches with other layers (static, quantized, linear attention) are never kept, only read again.
APPENDING_LAYERS = (DynamicLayer, DynamicSlidingWindowLayer)


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
    """Windows read together: their left-padded prefix ids and mask [B, P], and the prefix's key/value cache when
    it is kept (None: the prefix is read again, without gradient, each time the batch is used)."""

    windows: list[Window]
    prefix_ids: Tensor
    prefix_mask: Tensor
    calibration: bool
    cache: Any = None


def keepable(cache: Any) -> bool:
    """Whether ``cache`` can serve many passes through fresh_view: a DynamicCache of appending layers only."""
    return (type(cache) is DynamicCache and not cache.offloading
            and all(type(layer) in APPENDING_LAYERS for layer in cache.layers))


def fresh_view(cache: DynamicCache) -> DynamicCache:
    """A cache for one more pass after a stored prefix, without copying a tensor: its own layer objects (with
    their counters, e.g. a sliding layer's cumulative_length) over the stored keys and values, which the pass
    reads and replaces in the view (torch.cat), never writes."""
    view = copy.copy(cache)
    view.layers = [copy.copy(layer) for layer in cache.layers]
    return view


def cache_bytes(cache: Any) -> int:
    """Bytes of the keys and values a cache holds."""
    return tensor_bytes(t for layer in cache.layers for t in (layer.keys, layer.values))


def default_budget(device: torch.device, weights: int | None = None) -> int:
    """The default budget of kept prefix caches on ``device``: CACHE_SHARE of its free memory, at most CACHE_CAP
    and CACHE_WEIGHTS_SHARE x ``weights`` (the model's bytes) where given (0 where the free memory cannot be
    told: every prefix is then read again, which is slower but bounded)."""
    free = available_bytes(device)
    caps = [CACHE_CAP] + ([int(CACHE_WEIGHTS_SHARE * weights)] if weights else [])
    return 0 if free is None else min(*caps, int(CACHE_SHARE * free))


def cache_keyword(body: nn.Module) -> str:
    """The keyword a model body's forward takes its key/value cache by: "cache" since transformers renamed it
    (5.2x; "past_key_values" is deprecated there and goes in 5.40), else "past_key_values"."""
    return _cache_keyword(type(body))


@functools.lru_cache(maxsize=None)
def _cache_keyword(body_class: type) -> str:
    return "cache" if "cache" in inspect.signature(body_class.forward).parameters else "past_key_values"


def returned_cache(out: Any) -> Any:
    """The key/value cache a forward returned, under either name (``cache``, or ``past_key_values`` before)."""
    return out["cache"] if "cache" in out else out["past_key_values"]


def layer_states(model: nn.Module, embeds: Tensor, mask: Tensor, positions: Tensor, cache: Any) -> list[Tensor]:
    """Hidden states [B, T, d] of a tail at LAYER_FRACTIONS of the depth, after a cached prefix; the last is
    the head's input. ``positions`` are explicit, so left-padded prefixes cannot shift them."""
    out = model.base_model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions,
                           **{cache_keyword(model.base_model): cache}, output_hidden_states=True, use_cache=True)
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
    """Distill new input rows [k, d] for ``windows`` on a frozen model that lacks them. Each step only runs the
    few tail tokens, which is where the gradient is, after a prefix cache: kept from the first reading while
    ``cache_budget`` bytes allow (None: default_budget(device); 0: none kept), else read again for the step."""

    def __init__(self, model: nn.Module, windows: list[Window], tokens_before: int, cache_budget: int | None = None,
                 teacher: bool = True, read_ahead: bool = True):
        # teacher False: no teacher states, only student passes (joint); read_ahead False as well: no prefix read
        # before use either, for a Distiller whose batches are each used once (joint's input gradient)
        self.model, self.tokens_before, self.teacher, self.read_ahead = model, tokens_before, teacher, read_ahead or teacher
        self.device = model.get_input_embeddings().weight.device  # Accelerate's hooks move inputs on from here
        self.scale = embedding_scale(model.get_input_embeddings())
        weights = tensor_bytes(model.parameters())
        self.budget = default_budget(self.device, weights) if cache_budget is None else int(cache_budget)
        self.kept_bytes, self.targets_on_cpu = 0, 0
        self.batches: list[Batch] = []
        self.targets: list[list[Tensor]] = []
        for side in (False, True):  # a batch holds one side, so that its error is that side's
            group = sorted((w for w in windows if w.calibration == side), key=lambda w: len(w.prefix))
            for i in range(0, len(group), BATCH_WINDOWS):
                self._add(self._batch(group[i : i + BATCH_WINDOWS], side))

    def _batch(self, windows: list[Window], side: bool) -> Batch:
        ids, mask = _padded([w.prefix for w in windows], self.device, left=True)
        return Batch(windows, ids, mask, side)

    def _add(self, batch: Batch) -> None:
        """Read the batch's prefix once for its teacher states; keep the cache if it fits in the budget. The
        fitting side comes first, so its batches, used every epoch with a gradient, are the ones kept. The
        teacher states (float32, a few positions x d per window) count in the same budget, before the caches;
        beyond it they are kept on the CPU and brought to the device for each use. Without a teacher there are none,
        and the budget is the caches' (joint's calibration score, read again at every point of its walk); without
        reading ahead nothing is kept, and each use reads its prefix (one student pass per batch)."""
        if not self.read_ahead:
            self.batches.append(batch)
            self.targets.append([])
            return
        cache = self._read_prefix(batch)
        reusable = keepable(cache)
        targets = self._teacher(batch, fresh_view(cache) if reusable else cache) if self.teacher else []
        if self.kept_bytes + tensor_bytes(targets) <= self.budget:
            self.kept_bytes += tensor_bytes(targets)
        else:
            targets = [t.cpu() for t in targets]
            self.targets_on_cpu += 1
        if reusable and self.kept_bytes + cache_bytes(cache) <= self.budget:
            batch.cache, self.kept_bytes = cache, self.kept_bytes + cache_bytes(cache)
        self.batches.append(batch)
        self.targets.append(targets)

    @torch.no_grad()
    def _read_prefix(self, batch: Batch) -> Any:
        """The key/value cache of the batch's prefixes (no gradient); positions are explicit, so left padding
        cannot shift them."""
        positions = (batch.prefix_mask.cumsum(1) - 1).clamp_min(0)
        out = self.model.base_model(input_ids=batch.prefix_ids, attention_mask=batch.prefix_mask,
                                    position_ids=positions, use_cache=True)
        return returned_cache(out)

    def _pass_cache(self, batch: Batch) -> Any:
        """A prefix cache that one tail pass may extend: a view of the kept one, or the prefix read again (freed
        with the pass)."""
        return fresh_view(batch.cache) if batch.cache is not None else self._read_prefix(batch)

    def cache_facts(self) -> dict[str, Any]:
        """How many prefix caches are kept, their bytes and the budget (for the report)."""
        return {"batches": len(self.batches), "kept_prefix_caches": sum(b.cache is not None for b in self.batches),
                "kept_cache_mb": self.kept_bytes / 2**20, "cache_budget_mb": self.budget / 2**20,
                "teacher_states_on_cpu": self.targets_on_cpu}

    def _tail_states(self, batch: Batch, tails: list[list[int]], rows: Tensor | None, cache: Any) -> list[Tensor]:
        ids, mask = _padded(tails, self.device)
        positions = batch.prefix_mask.sum(1, keepdim=True) + torch.arange(ids.shape[1], device=self.device)
        embeds = (self.model.get_input_embeddings()(ids) if rows is None
                  else embed_with_rows(self.model, ids, rows, self.tokens_before, self.scale))
        full_mask = torch.cat([batch.prefix_mask, mask], 1)
        return layer_states(self.model, embeds, full_mask, positions, cache)

    def final_states(self, rows: Tensor, index: int) -> Tensor:
        """The head's input [B, T, d] (float32) on batch ``index``'s student tails, reading new input rows [k, d]
        (joint scores the next tokens with it)."""
        batch = self.batches[index]
        states = self._tail_states(batch, [w.student for w in batch.windows], rows, self._pass_cache(batch))
        return states[-1].to(torch.float32)

    @torch.no_grad()
    def _teacher(self, batch: Batch, cache: Any) -> list[Tensor]:
        states = self._tail_states(batch, [w.teacher for w in batch.windows], None, cache)
        return _gather(states, [w.teacher_positions for w in batch.windows])

    def loss(self, rows: Tensor, index: int) -> Tensor:
        """Mean relative squared error of batch ``index`` under new input rows [k, d]."""
        batch = self.batches[index]
        states = self._tail_states(batch, [w.student for w in batch.windows], rows, self._pass_cache(batch))
        student = _gather(states, [w.student_positions for w in batch.windows])
        # Relative error per state: a few positions carry huge activations (attention sinks), and an absolute
        # error would let them drown the rest.
        targets = [t.to(s.device) for s, t in zip(student, self.targets[index])]  # no copy where already there
        errors = [((s - t).pow(2).sum(1) / t.pow(2).sum(1).clamp_min(1e-12)).mean() for s, t in zip(student, targets)]
        return torch.stack(errors).mean()

    def error(self, rows: Tensor, calibration: bool) -> float:
        """Mean error over the fitting (or calibration) windows."""
        with torch.no_grad():
            scores = [(self.loss(rows, i).item(), len(b.windows)) for i, b in enumerate(self.batches)
                      if b.calibration == calibration]
        return sum(s * n for s, n in scores) / max(1, sum(n for _, n in scores))


@contextlib.contextmanager
def frozen(model: nn.Module) -> Iterator[None]:
    """The model's weights without gradients inside (only the new rows get one), as they were after."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    for p in trainable:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in trainable:
            p.requires_grad_(True)


def distill_rows(model: nn.Module, windows: list[Window], start: Tensor, tokens_before: int, *, free: Tensor,
                 epochs: int, seed: int, progress: bool = True, cache_budget: int | None = None) -> DistillResult:
    """New input rows [k, d], starting from ``start``; rows where ``free`` is False are not trained.
    ``cache_budget``: bytes of prefix caches kept between steps (Distiller)."""
    began = time.perf_counter()
    with frozen(model):
        distiller = Distiller(model, windows, tokens_before, cache_budget)
        result = _train(distiller, start, free, epochs, seed, progress)
        result.report["prefix_caches"] = distiller.cache_facts()
    result.report.update({"windows": len(windows), "seconds": time.perf_counter() - began})
    return result


def _train(distiller: Distiller, start: Tensor, free: Tensor, epochs: int, seed: int, progress: bool) -> DistillResult:
    reference = distiller.model.get_input_embeddings().weight
    lr = LR_SCALE * reference[: distiller.tokens_before].detach().to(torch.float32).std().item()
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
