"""The rows of the new tokens, before they are written anywhere: each side's heuristic rows from its strategy's
rows(), then the learned ones from the data-driven strategies (learning/orchestrate.py).

`new_rows` is the public entry point: it resolves its inputs once (the corpus to its train documents, "auto" to
strategies, the pair through rows/policy.py) and hands them to `compute_rows`, which takes them as they are.

Left out: which strategies run (rows/policy.py); writing rows into the model (rows/grow.py); the strategies'
maths (strategies/).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

import torch
from torch import Tensor, nn

from ..config import ExpandConfig
from ..learning.orchestrate import StartRows, learn_rows
from ..planning import TokenPlan
from ..strategies import RowRequest, Strategy
from .layout import check_rows_cover, embedding_layout
from .policy import check_strategies, stays_tied

if TYPE_CHECKING:
    from ..corpus import Corpus


# Each matrix draws from its own generator, so the output rows do not depend on the input strategy.
OUTPUT_SEED_OFFSET = 1_000_003


def row_request(initializer_range: float, tokens_before: int, pieces: list[list[int]], config: ExpandConfig,
                role: str, strategy: str) -> RowRequest:
    """The RowRequest of ``strategy`` for one matrix ("input" or "output"), with that matrix's own seeded
    generator and the strategy's typed options."""
    seed = config.seed + (OUTPUT_SEED_OFFSET if role == "output" else 0)
    return RowRequest(
        pieces=pieces,
        tokens_before=tokens_before,
        generator=torch.Generator().manual_seed(seed),
        initializer_range=initializer_range,
        options=config.options_for(strategy),
    )


def initializer_range(config: Any) -> float:
    """The std of the model's random init, from its (text) config: what the `random` strategy draws with."""
    return float(getattr(config.get_text_config(), "initializer_range", 0.02))


@dataclass
class NewRows:
    """The rows of the new tokens for one model and config: input [k, d]; output [k, d] and bias [k] when the
    head has its own rows (None when tied or absent); details: what fit/distill did (sample, choices)."""

    input: Tensor
    output: Tensor | None
    bias: Tensor | None
    tied: bool
    input_strategy: str
    output_strategy: str
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def head(self) -> Tensor:
        """The rows the output head uses: its own, or the shared input rows of a tied model."""
        return self.input if self.output is None else self.output


@dataclass(frozen=True)
class OldMatrices:
    """The matrices new rows are computed from, as stored: input [n, d]; output [n, d], the head's matrix (the
    input itself on a tied model; None without a head); bias [n] of the head, or None. tied: whether the model
    shares one matrix; initializer_range: the std of the model's random init."""

    input: Tensor
    output: Tensor | None
    bias: Tensor | None
    tied: bool
    initializer_range: float

    @classmethod
    def of(cls, model: nn.Module) -> "OldMatrices":
        layout = embedding_layout(model)
        output = layout.output.weight.data if layout.output is not None else None
        bias = layout.output.bias.data if layout.has_bias else None
        return cls(layout.input.weight.data, output, bias, layout.tied, initializer_range(model.config))


@torch.no_grad()
def new_rows(model: nn.Module, plan: TokenPlan, config: ExpandConfig, corpus: "Corpus | Sequence[str] | None" = None,
             *, learned_cache: dict | None = None, progress: bool = False) -> NewRows:
    """The new rows apply_plan writes, computed without copying the model. ``corpus``: a Corpus (its train
    split is used), a path or alias, or documents. ``learned_cache`` shares the text sample and learned rows
    between calls (diagnose compares several strategies on one plan)."""
    from ..corpus import train_documents

    documents = train_documents(corpus)
    config = config.resolved(documents is not None)
    pair = check_strategies(model, config, documents is not None)
    return compute_rows(model, plan, config, pair, documents, learned_cache=learned_cache, progress=progress)


@torch.no_grad()
def compute_rows(model: nn.Module, plan: TokenPlan, config: ExpandConfig, pair: tuple[Strategy, Strategy],
                 documents: Sequence[str] | None, *, learned_cache: dict | None = None,
                 progress: bool = False) -> NewRows:
    """new_rows on resolved inputs: ``config`` resolved, ``pair`` from check_strategies, ``documents`` the
    train documents (None without text)."""
    inp, out = pair
    rows = starting_rows(OldMatrices.of(model), plan, config, pair)
    if (inp.needs_corpus or out.needs_corpus) and plan.pieces:
        start = StartRows(rows.input, rows.output, rows.bias)
        learned, rows.details = learn_rows(model, plan, config, documents, pair, start,
                                           learned_cache if learned_cache is not None else {}, progress)
        rows.input, rows.output, rows.bias = learned
    return rows


@torch.no_grad()
def starting_rows(old: OldMatrices, plan: TokenPlan, config: ExpandConfig, pair: tuple[Strategy, Strategy]) -> NewRows:
    """Each side's rows from its strategy's rows() (the final rows of a static pair; a data-driven strategy's
    start), computed in float32 from ``old`` in its stored dtype. ``pair``: check_pair's effective strategies.
    A tied model that stays tied gets input rows only; an untied head gets output rows and bias entries."""
    check_rows_cover(old.input.shape[0], plan.tokens_before)
    inp, out = pair
    tied = stays_tied(old.tied, config)
    request = row_request(old.initializer_range, plan.tokens_before, plan.pieces, config, "input", inp.name)
    rows = NewRows(_rows_of(inp, old.input, request), None, None, tied, inp.name, out.name)
    if not tied and old.output is not None:
        request = row_request(old.initializer_range, plan.tokens_before, plan.pieces, config, "output", out.name)
        rows.output = _rows_of(out, old.output, request)
        rows.bias = _rows_of(out, old.bias, request, is_bias=True) if old.bias is not None else None
    return rows


def _rows_of(strategy: Strategy, old: Tensor, request: RowRequest, is_bias: bool = False) -> Tensor:
    """The strategy's rows [k, d] (or bias entries [k]); no call at all for k = 0."""
    if request.k == 0:
        return torch.zeros((0, *old.shape[1:]), dtype=torch.float32)
    return strategy.bias(old, request) if is_bias else strategy.rows(old, request)
