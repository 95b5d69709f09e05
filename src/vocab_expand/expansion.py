"""`expand`: add words to a model and its tokenizer in one call, and report what was done.

Pipeline: check the words, plan the vocabulary entries through the tokenizer's family, extend the
tokenizer, grow the embedding matrices with the chosen strategies, update the config. The caller's
objects are untouched unless inplace=True.

Left out: loading and saving (loading.py, io.py), measuring the result (diagnostics).
"""

from __future__ import annotations

import copy
import math
import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable, Sequence

import torch
from torch import Tensor, nn
from transformers import PreTrainedTokenizerBase

from . import resize
from .config import AUTO, ExpandConfig
from .corpus import as_corpus
from .errors import InvalidInputError, NothingAddedError
from .io import atomic_directory, write_json
from .strategies import RowRequest, Strategy, get_strategy
from .tokenization import (
    Skipped,
    check_words,
    next_free_id,
    plan_added_tokens,
    plan_words,
    tokenizer_from_spec,
    tokenizer_spec,
    with_added_tokens,
)
from .families import NewEntry, detect_family

if TYPE_CHECKING:
    from .corpus import Corpus


@dataclass
class Expansion:
    """The result of :func:`expand`.

    new_tokens: the vocabulary strings added ("ĠJehoshaphat"), in id order; new_token_ids: their ids;
    words: the word each new token stands for; pieces: the old ids each new token replaces;
    skipped: (word, reason) for every word not added; report: counts, strategies, timings, config.
    """

    model: nn.Module
    tokenizer: PreTrainedTokenizerBase
    new_tokens: list[str]
    new_token_ids: list[int]
    words: list[str]
    pieces: list[list[int]]
    skipped: list[Skipped]
    report: dict[str, Any] = field(default_factory=dict)

    def save(self, path: str | os.PathLike, *, force: bool = False, allow_empty: bool = False) -> None:
        """Write model, tokenizer and expansion.json to ``path`` atomically (a temporary folder, then rename).

        The folder loads with plain AutoModelForCausalLM/AutoTokenizer.from_pretrained, no custom code.
        An existing folder is only replaced with force=True. When every word was skipped, nothing is saved
        (NothingAddedError) unless allow_empty=True: an unchanged copy of the model is rarely what was meant.
        """
        if not self.new_tokens and not allow_empty:
            reasons = "; ".join(f"{s.word!r}: {s.reason}" for s in self.skipped[:10])
            raise NothingAddedError(f"every word was skipped ({reasons}), so nothing was saved; pass "
                                    "allow_empty=True (--allow-empty) to save the unchanged model anyway")
        with atomic_directory(path, force=force) as tmp:
            self.model.save_pretrained(tmp)
            self.tokenizer.save_pretrained(tmp)
            write_json(tmp / "expansion.json", self.report)


@dataclass
class TokenPlan:
    """The strategy-independent half of an expansion: the extended tokenizer and the new entries."""

    tokenizer: PreTrainedTokenizerBase
    family: str
    tokens_before: int
    words_given: int
    entries: list[NewEntry]
    new_token_ids: list[int]
    skipped: list[Skipped]
    seconds: float

    @property
    def pieces(self) -> list[list[int]]:
        return [list(e.pieces) for e in self.entries]


def plan_tokens(tokenizer: PreTrainedTokenizerBase, words: Iterable[str], config: ExpandConfig) -> TokenPlan:
    """Check the words, plan their entries through the tokenizer's family, and build the new tokenizer."""
    word_list = check_words(words)
    start = time.perf_counter()
    spec = tokenizer_spec(tokenizer)
    first_id = next_free_id(spec)
    if first_id != len(tokenizer):
        raise InvalidInputError(f"tokenizer ids are not contiguous: next free id {first_id}, len(tokenizer) {len(tokenizer)}")
    if config.kind == "added":
        family_name, plan = "added", plan_added_tokens(tokenizer, word_list)
    else:
        family = detect_family(spec)
        family_name, plan = family.name, plan_words(family, word_list, config.forms)
    new_ids = list(range(first_id, first_id + len(plan.entries)))
    if not plan.entries:
        new_tokenizer = tokenizer if config.inplace else copy.deepcopy(tokenizer)
    elif config.kind == "added":
        flags = dict(lstrip=config.lstrip, rstrip=config.rstrip, single_word=config.single_word,
                     normalized=config.normalized)
        new_tokenizer = with_added_tokens(tokenizer, plan.entries, flags, config.special)
    else:
        new_tokenizer = tokenizer_from_spec(tokenizer, family.extend(list(zip(plan.entries, new_ids))))
    return TokenPlan(new_tokenizer, family_name, len(tokenizer), len(word_list), plan.entries, new_ids,
                     plan.skipped, time.perf_counter() - start)


def apply_plan(model: nn.Module, plan: TokenPlan, config: ExpandConfig, rows: "NewRows | None" = None, *,
               corpus: "Corpus | Sequence[str] | None" = None, progress: bool = False) -> Expansion:
    """Grow the model's matrices for a token plan (on a copy unless config.inplace). ``rows`` reuses rows
    computed before (new_rows); otherwise they are computed here, from ``corpus`` for fit and distill."""
    start = time.perf_counter()
    corpus = as_corpus(corpus)
    config = config.resolved(corpus is not None)
    rows = rows if rows is not None else new_rows(model, plan, config, corpus, progress=progress)
    new_model = model if config.inplace else copy.deepcopy(model)
    facts = grow_embeddings(new_model, plan.tokens_before, rows, config)
    report = {
        "family": plan.family,
        "words_given": plan.words_given,
        "tokens_added": len(plan.entries),
        "words_skipped": len(plan.skipped),
        "skipped": [s._asdict() for s in plan.skipped],
        "new_tokens": [{"id": i, "token": e.token, "text": e.text, "word": e.word, "form": e.form,
                        "pieces": list(e.pieces)} for e, i in zip(plan.entries, plan.new_token_ids)],
        **facts,
        **({"data_driven": rows.details} if rows.details else {}),
        "timings": {"tokenizer_s": plan.seconds, "embeddings_s": time.perf_counter() - start},
        "config": config.to_dict(),
    }
    return Expansion(
        model=new_model,
        tokenizer=plan.tokenizer,
        new_tokens=[e.token for e in plan.entries],
        new_token_ids=list(plan.new_token_ids),
        words=[e.word for e in plan.entries],
        pieces=plan.pieces,
        skipped=list(plan.skipped),
        report=report,
    )


def expand(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    words: Iterable[str],
    input_init: str | None = None,
    output_init: str | None = None,
    seed: int | None = None,
    pad_to_multiple_of: int | None = None,
    *,
    corpus: "Corpus | Sequence[str] | None" = None,
    progress: bool = False,
    **options: Any,
) -> Expansion:
    """Add ``words`` to ``model`` and ``tokenizer`` as single tokens.

    Input rows come from ``input_init`` and output rows from ``output_init`` (names in STRATEGIES; the
    default "auto" is distill/fit when ``corpus`` is given and subword/mean when not). ``corpus`` (a Corpus,
    whose train split is used, a path or alias such as "kjv", or a list of documents) is the domain text that `fit` and `distill` learn from. Other ExpandConfig fields (forms, tie_policy,
    cov_scale, fit_max_positions, inplace, ...) are accepted as keyword options. Returns an
    :class:`Expansion`; words that cannot be added are reported in ``skipped``, never silently dropped.
    """
    corpus = as_corpus(corpus)  # a path or alias is loaded, never read as one-character documents
    config = make_config(input_init=input_init, output_init=output_init, seed=seed,
                         pad_to_multiple_of=pad_to_multiple_of, **options).resolved(corpus is not None)
    check_strategies(model, config, corpus)  # bad choices fail before any work
    return apply_plan(model, plan_tokens(tokenizer, words, config), config, corpus=corpus, progress=progress)


def make_config(**given: Any) -> ExpandConfig:
    """An ExpandConfig from keyword arguments, where None means "the default"."""
    return ExpandConfig(**{k: v for k, v in given.items() if v is not None})


# Each matrix draws from its own generator, so the output rows do not depend on the input strategy.
OUTPUT_SEED_OFFSET = 1_000_003


def row_request(model: nn.Module, tokens_before: int, pieces: list[list[int]], config: ExpandConfig,
                role: str) -> RowRequest:
    """The RowRequest for one matrix ("input" or "output"), with that matrix's own seeded generator."""
    seed = config.seed + (OUTPUT_SEED_OFFSET if role == "output" else 0)
    return RowRequest(
        pieces=pieces,
        reference_rows=tokens_before,
        generator=torch.Generator().manual_seed(seed),
        initializer_range=float(getattr(model.config.get_text_config(), "initializer_range", 0.02)),
        options={"cov_scale": config.cov_scale},
    )


def stays_tied(layout: resize.EmbeddingLayout, config: ExpandConfig) -> bool:
    """A tied model stays tied unless its two strategies differ and tie_policy is "untie", or is "auto" and
    one of them learns from text (fit or distill rows only make sense on their own side)."""
    config = config.resolved(False) if AUTO in (config.input_init, config.output_init) else config
    if not layout.tied or config.input_init == config.output_init:
        return layout.tied
    data_driven = get_strategy(config.input_init).needs_corpus or get_strategy(config.output_init).needs_corpus
    return not (config.tie_policy == "untie" or (config.tie_policy == "auto" and data_driven))


def effective_strategies(tied: bool, config: ExpandConfig) -> tuple[Strategy, Strategy]:
    """(input, output) strategies actually used: a tied model's shared row follows config.tie_policy."""
    config = config.resolved(False) if AUTO in (config.input_init, config.output_init) else config
    chosen = get_strategy(config.input_init), get_strategy(config.output_init)
    if tied and chosen[0].name != chosen[1].name:
        shared = chosen[0] if config.tie_policy == "input" else chosen[1]
        return shared, shared
    return chosen


def check_strategies(model: nn.Module, config: ExpandConfig, corpus: object = None) -> tuple[Strategy, Strategy]:
    """The effective (input, output) strategies; a clear error for a strategy on the wrong side, a
    data-driven one on a shared row, or one without text."""
    config = config.resolved(corpus is not None)
    layout = resize.embedding_layout(model)
    tied = stays_tied(layout, config)
    pair = effective_strategies(tied, config)
    for side, strategy in zip(("input", "output"), pair):
        if side not in strategy.sides and not (tied and side == "output"):
            other = "INPUT/fit, e.g. subword/fit or distill/fit" if side == "input" else "distill/OUTPUT, e.g. distill/mean"
            raise InvalidInputError(f"{strategy.name!r} initializes {strategy.sides[0]} rows only; use {other}")
    if tied and pair[0].needs_corpus:
        raise InvalidInputError(f"{pair[0].name!r} rows cannot be shared by the input and output side of this tied model; "
                         "use tie_policy='auto' or 'untie' with different input and output strategies")
    if corpus is None and any(s.needs_corpus for s in pair):
        raise InvalidInputError(f"{' and '.join(s.name for s in pair if s.needs_corpus)} learn rows from domain text: pass "
                         "corpus=... (CLI: --corpus kjv or a file); without text use subword/mean")
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


@torch.no_grad()
def new_rows(model: nn.Module, plan: TokenPlan, config: ExpandConfig, corpus: "Corpus | Sequence[str] | None" = None,
             *, cache: dict | None = None, progress: bool = False) -> NewRows:
    """The new rows apply_plan writes, computed without copying the model. ``cache`` shares the text sample
    and distilled rows between calls (diagnose compares several strategies on one plan)."""
    config = config.resolved(corpus is not None)
    layout = resize.embedding_layout(model)
    tied = stays_tied(layout, config)
    inp, out = check_strategies(model, config, corpus)
    request = row_request(model, plan.tokens_before, plan.pieces, config, "input")
    rows = NewRows(_rows_of(inp, layout.input.weight.data, request), None, None, tied, inp.name, out.name)
    if not tied and layout.output is not None:
        request = row_request(model, plan.tokens_before, plan.pieces, config, "output")
        rows.output = _rows_of(out, layout.output.weight.data, request)
        rows.bias = _rows_of(out, layout.output.bias.data, request, is_bias=True) if layout.has_bias else None
    if (inp.needs_corpus or out.needs_corpus) and plan.pieces:
        from .refine import refine_rows

        refine_rows(model, plan, config, corpus, rows, cache if cache is not None else {}, progress)
    return rows


def _rows_of(strategy: Strategy, old: Tensor, request: RowRequest, is_bias: bool = False) -> Tensor:
    """The strategy's rows [k, d] (or bias entries [k]); no call at all for k = 0."""
    if request.k == 0:
        return torch.zeros((0, *old.shape[1:]), dtype=torch.float32)
    return strategy.bias(old, request) if is_bias else strategy.rows(old, request)


@torch.no_grad()
def grow_embeddings(model: nn.Module, tokens_before: int, rows: NewRows, config: ExpandConfig) -> dict[str, Any]:
    """Grow the model's matrices in place for the new rows; returns the row facts for the report."""
    layout = resize.embedding_layout(model)
    k = rows.input.shape[0]
    plan = resize.plan_rows(layout.input.weight.shape[0], tokens_before, k, config.pad_to_multiple_of)
    if layout.tied and not rows.tied:
        resize.untie(model, layout)
    old_input = layout.input.weight
    resize.set_weight(layout.input, resize.fill_new_rows(old_input.data, plan, rows.input), old_input)
    if rows.tied:
        layout.output.weight = layout.input.weight
        layout.output.out_features = plan.new_rows
    elif layout.output is not None:
        old_output = layout.output.weight
        resize.set_weight(layout.output, resize.fill_new_rows(old_output.data, plan, rows.output), old_output)
        if layout.has_bias:
            new_bias = resize.fill_new_rows(layout.output.bias.data, plan, rows.bias, is_bias=True)
            layout.output.bias = nn.Parameter(new_bias, requires_grad=layout.output.bias.requires_grad)
    resize.set_vocab_size(model, plan.new_rows)
    return {
        "rows_before": plan.old_rows,
        "rows_after": plan.new_rows,
        "reused_spare_rows": plan.reused_spare_rows,
        "padding_rows": len(plan.padding_ids),
        "tied": rows.tied,
        "input_strategy": rows.input_strategy,
        "output_strategy": rows.output_strategy,
        "hewitt_bound_nats": hewitt_bound(k + len(plan.padding_ids), tokens_before),
    }


def hewitt_bound(k: int, n: int) -> float:
    """log(1 + k/n): the most KL(old || new) that k mean-initialized output rows can cost, over n tokens."""
    return math.log1p(k / n) if n else float("inf")
