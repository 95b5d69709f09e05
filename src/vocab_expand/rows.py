"""The rows of the new tokens, before they are written anywhere: which strategies apply (the tie policy), the
heuristic rows of each side, and the learned ones from the data-driven strategies (learning/orchestrate.py).

Left out: writing rows into the model (surgery.py); the strategies' maths (strategies/).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

import torch
from torch import Tensor, nn

from . import resize
from .config import AUTO, AUTO_WITH_TEXT, SHARED_WITH_TEXT, ExpandConfig
from .errors import InvalidInputError
from .learning.orchestrate import StartRows, learn_rows
from .planning import TokenPlan
from .strategies import DataDrivenStrategy, RowRequest, Strategy, get_strategy

if TYPE_CHECKING:
    from .corpus import Corpus


# Each matrix draws from its own generator, so the output rows do not depend on the input strategy.
OUTPUT_SEED_OFFSET = 1_000_003


def row_request(initializer_range: float, tokens_before: int, pieces: list[list[int]], config: ExpandConfig,
                role: str, strategy: str) -> RowRequest:
    """The RowRequest of ``strategy`` for one matrix ("input" or "output"), with that matrix's own seeded
    generator and the strategy's typed options."""
    seed = config.seed + (OUTPUT_SEED_OFFSET if role == "output" else 0)
    return RowRequest(
        pieces=pieces,
        reference_rows=tokens_before,
        generator=torch.Generator().manual_seed(seed),
        initializer_range=initializer_range,
        options=config.options_for(strategy),
    )


def initializer_range(config: Any) -> float:
    """The std of the model's random init, from its (text) config: what the `random` strategy draws with."""
    return float(getattr(config.get_text_config(), "initializer_range", 0.02))


def stays_tied(tied: bool, config: ExpandConfig) -> bool:
    """A tied model stays tied unless its two strategies differ and tie_policy is "untie". With "auto" it stays
    tied when a strategy learns from text too, if that is distill or fit: the shared row is then learned by
    `joint` from both signals (the output row decides safety, Hewitt; and users do not expect 100 words to add a
    head copy). Another one-sided strategy that learns from text (a plug-in) unties, as its rows only make
    sense on their own side."""
    config = config.resolved(False) if AUTO in (config.input_init, config.output_init) else config
    if not tied or config.input_init == config.output_init:
        return tied
    if config.tie_policy == AUTO:
        return not _one_sided_learners(config)
    return config.tie_policy != "untie"


def _one_sided_learners(config: ExpandConfig) -> list[Strategy]:
    """The pair's strategies that learn one side's rows from text and that `joint` does not stand in for."""
    pair = get_strategy(config.input_init), get_strategy(config.output_init)
    return [s for s in pair if s.needs_corpus and not _shares_row(s) and s.name not in AUTO_WITH_TEXT]


def effective_strategies(tied: bool, config: ExpandConfig) -> tuple[Strategy, Strategy]:
    """(input, output) strategies actually used: a tied model's shared row follows config.tie_policy. With
    "auto", the pair distill/fit (the default with a corpus) shares one `joint` row, fitted against both
    signals; check_pair refuses any other pair that would need a stand-in."""
    config = config.resolved(False) if AUTO in (config.input_init, config.output_init) else config
    chosen = get_strategy(config.input_init), get_strategy(config.output_init)
    if tied and chosen[0].name != chosen[1].name:
        if config.tie_policy == AUTO and (chosen[0].name, chosen[1].name) == AUTO_WITH_TEXT:
            shared = get_strategy(SHARED_WITH_TEXT)
        else:
            shared = chosen[0] if config.tie_policy == "input" else chosen[1]
        return shared, shared
    return chosen


def _shares_row(strategy: Strategy) -> bool:
    return isinstance(strategy, DataDrivenStrategy) and strategy.shares_row()


def check_strategies(model: nn.Module, config: ExpandConfig, corpus: object = None) -> tuple[Strategy, Strategy]:
    """The effective (input, output) strategies for ``model``; see check_pair."""
    return check_pair(resize.embedding_layout(model).tied, config, corpus)


def check_sides(config: ExpandConfig) -> tuple[Strategy, Strategy]:
    """The named (input, output) strategies of a resolved config; InvalidInputError for one named for a side it
    does not initialize (fit as input, distill as output): what is named runs on the side it was named for.
    Needs no model, so the CLI checks it before loading one."""
    named = get_strategy(config.input_init), get_strategy(config.output_init)
    for side, strategy in zip(("input", "output"), named):
        if side not in strategy.sides:
            other = "INPUT/fit, e.g. subword/fit or distill/fit" if side == "input" else "distill/OUTPUT, e.g. distill/mean"
            raise InvalidInputError(f"{strategy.name!r} initializes {strategy.sides[0]} rows only, and was named for "
                                    f"the {side} rows; use {other}")
    return named


def check_pair(model_tied: bool, config: ExpandConfig, corpus: object = None) -> tuple[Strategy, Strategy]:
    """The effective (input, output) strategies for a model whose matrices are tied or not; a clear error for a
    strategy on the wrong side, a one-sided data-driven one on a shared row (or a shared-row one on an untied
    model), or one without text."""
    config = config.resolved(corpus is not None)
    named = check_sides(config)
    tied = stays_tied(model_tied, config)
    if (tied and config.tie_policy == AUTO and named[0].name != named[1].name and any(s.needs_corpus for s in named)
            and (named[0].name, named[1].name) != AUTO_WITH_TEXT):
        raise InvalidInputError(f"this tied model has one row per new token, so {named[0].name}/{named[1].name} "
                                f"cannot run as named: use {SHARED_WITH_TEXT} (the tied default with a corpus; "
                                "distill/fit gives it too), the same strategy on both sides, or tie_policy='untie' "
                                "(--tie-policy untie) for separate input and output rows")
    pair = effective_strategies(tied, config)
    for side, strategy in zip(("input", "output"), pair):
        if side not in strategy.sides and not (tied and side == "output"):
            other = "INPUT/fit, e.g. subword/fit or distill/fit" if side == "input" else "distill/OUTPUT, e.g. distill/mean"
            raise InvalidInputError(f"{strategy.name!r} initializes {strategy.sides[0]} rows only; use {other}")
    if tied and pair[0].needs_corpus and not _shares_row(pair[0]):
        raise InvalidInputError(f"{pair[0].name!r} rows cannot be shared by the input and output side of this tied "
                                f"model; use {SHARED_WITH_TEXT!r} (tie_policy='auto' picks it), or tie_policy='untie' "
                                "with different input and output strategies")
    if not tied and any(_shares_row(s) for s in pair):
        raise InvalidInputError(f"{pair[0].name!r} learns the one shared row of a tied model, and this model's rows "
                                "are not shared (untied, or tie_policy='untie'); use distill/fit")
    if config.reuse_reserved and any(s.needs_corpus for s in pair):
        raise InvalidInputError("reuse_reserved works with strategies that need no text (e.g. subword/mean): "
                                "fit and distill assume new ids after the old ones; leave reuse_reserved off")
    if corpus is None and any(s.needs_corpus for s in (*named, *pair)):
        learners = dict.fromkeys(s.name for s in named if s.needs_corpus) or dict.fromkeys(p.name for p in pair)
        raise InvalidInputError(f"{' and '.join(learners)} learn{'s' if len(learners) == 1 else ''} rows from domain "
                                "text: pass corpus=... (CLI: --corpus kjv or a file); without text use subword/mean")
    return pair


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
        layout = resize.embedding_layout(model)
        output = layout.output.weight.data if layout.output is not None else None
        bias = layout.output.bias.data if layout.has_bias else None
        return cls(layout.input.weight.data, output, bias, layout.tied, initializer_range(model.config))


@torch.no_grad()
def new_rows(model: nn.Module, plan: TokenPlan, config: ExpandConfig, corpus: "Corpus | Sequence[str] | None" = None,
             *, cache: dict | None = None, progress: bool = False) -> NewRows:
    """The new rows apply_plan writes, computed without copying the model. ``cache`` shares the text sample
    and distilled rows between calls (diagnose compares several strategies on one plan)."""
    config = config.resolved(corpus is not None)
    inp, out = check_strategies(model, config, corpus)
    rows = starting_rows(OldMatrices.of(model), plan, config, (inp, out))
    if (inp.needs_corpus or out.needs_corpus) and plan.pieces:
        start = StartRows(rows.input, rows.output, rows.bias)
        learned, rows.details = learn_rows(model, plan, config, corpus, (inp, out), start,
                                           cache if cache is not None else {}, progress)
        rows.input, rows.output, rows.bias = learned
    return rows


@torch.no_grad()
def starting_rows(old: OldMatrices, plan: TokenPlan, config: ExpandConfig, pair: tuple[Strategy, Strategy]) -> NewRows:
    """Each side's rows from its strategy's rows() (the final rows of a static pair; a data-driven strategy's
    start), computed in float32 from ``old`` in its stored dtype. ``pair``: check_pair's effective strategies.
    A tied model that stays tied gets input rows only; an untied head gets output rows and bias entries."""
    resize.check_rows_cover(old.input.shape[0], plan.tokens_before)
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
