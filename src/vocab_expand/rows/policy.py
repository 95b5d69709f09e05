"""Which strategies run on which rows: the tie policy of a tied model (kept tied, untied, or one shared `joint`
row), and the checks that what the user named can run as named (the right side, text where a strategy learns from
it, one shared row only on a tied model). Every function takes a resolved config (ExpandConfig.resolved): the
public entry points resolve it once.

Left out: computing the rows (rows/compute.py); the strategies themselves (strategies/).
"""

from __future__ import annotations

from torch import nn

from ..config import AUTO, AUTO_WITH_TEXT, SHARED_WITH_TEXT, ExpandConfig
from ..errors import InvalidInputError
from ..strategies import DataDrivenStrategy, Strategy, get_strategy
from .layout import embedding_layout


def stays_tied(tied: bool, config: ExpandConfig) -> bool:
    """A tied model stays tied unless its two strategies differ and tie_policy is "untie". With "auto" it stays
    tied when a strategy learns from text too, if that is distill or fit: the shared row is then learned by
    `joint` from both signals (the output row decides safety, Hewitt; and users do not expect 100 words to add a
    head copy). Another one-sided strategy that learns from text (a plug-in) unties, as its rows only make
    sense on their own side."""
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


def check_strategies(model: nn.Module, config: ExpandConfig, has_text: bool) -> tuple[Strategy, Strategy]:
    """The effective (input, output) strategies for ``model``; see check_pair."""
    return check_pair(embedding_layout(model).tied, config, has_text)


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


def check_pair(model_tied: bool, config: ExpandConfig, has_text: bool) -> tuple[Strategy, Strategy]:
    """The effective (input, output) strategies for a model whose matrices are tied or not, under a resolved
    ``config``; a clear error for a strategy on the wrong side, a one-sided data-driven one on a shared row (or a
    shared-row one on an untied model), or one that learns from text when there is none (``has_text``)."""
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
    if not has_text and any(s.needs_corpus for s in (*named, *pair)):
        learners = dict.fromkeys(s.name for s in named if s.needs_corpus) or dict.fromkeys(p.name for p in pair)
        raise InvalidInputError(f"{' and '.join(learners)} learn{'s' if len(learners) == 1 else ''} rows from domain "
                                "text: pass corpus=... (CLI: --corpus kjv or a file); without text use subword/mean")
    return pair
