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
from typing import Any, Iterable

import torch
from torch import Tensor, nn
from transformers import PreTrainedTokenizerBase

from . import resize
from .config import ExpandConfig
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

    def save(self, path: str | os.PathLike, *, force: bool = False) -> None:
        """Write model, tokenizer and expansion.json to ``path`` atomically (a temporary folder, then rename).

        The folder loads with plain AutoModelForCausalLM/AutoTokenizer.from_pretrained, no custom code.
        An existing folder is only replaced with force=True.
        """
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
        raise ValueError(f"tokenizer ids are not contiguous: next free id {first_id}, len(tokenizer) {len(tokenizer)}")
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


def apply_plan(model: nn.Module, plan: TokenPlan, config: ExpandConfig) -> Expansion:
    """Grow the model's matrices for a token plan (on a copy unless config.inplace)."""
    start = time.perf_counter()
    new_model = model if config.inplace else copy.deepcopy(model)
    rows = grow_embeddings(new_model, plan.tokens_before, plan.pieces, config)
    report = {
        "family": plan.family,
        "words_given": plan.words_given,
        "tokens_added": len(plan.entries),
        "words_skipped": len(plan.skipped),
        "skipped": [s._asdict() for s in plan.skipped],
        "new_tokens": [{"id": i, "token": e.token, "text": e.text, "word": e.word, "form": e.form,
                        "pieces": list(e.pieces)} for e, i in zip(plan.entries, plan.new_token_ids)],
        **rows,
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
    **options: Any,
) -> Expansion:
    """Add ``words`` to ``model`` and ``tokenizer`` as single tokens.

    Input rows come from ``input_init`` and output rows from ``output_init`` (names in STRATEGIES; defaults
    in ExpandConfig: subword and mean). Other ExpandConfig fields (forms, tie_policy, cov_scale, inplace,
    ...) are accepted as keyword options. Returns an :class:`Expansion`; words that cannot be added are
    reported in ``skipped``, never silently dropped.
    """
    config = make_config(input_init=input_init, output_init=output_init, seed=seed,
                         pad_to_multiple_of=pad_to_multiple_of, **options)
    get_strategy(config.input_init), get_strategy(config.output_init)  # unknown names fail before any work
    return apply_plan(model, plan_tokens(tokenizer, words, config), config)


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
    """A tied model stays tied unless its two strategies differ and tie_policy is "untie"."""
    return layout.tied and not (config.input_init != config.output_init and config.tie_policy == "untie")


def effective_strategies(tied: bool, config: ExpandConfig) -> tuple[Strategy, Strategy]:
    """(input, output) strategies actually used: a tied model's shared row follows config.tie_policy."""
    chosen = get_strategy(config.input_init), get_strategy(config.output_init)
    if tied and chosen[0].name != chosen[1].name and config.tie_policy != "untie":
        shared = chosen[0] if config.tie_policy == "input" else chosen[1]
        return shared, shared
    return chosen


@torch.no_grad()
def new_output_rows(model: nn.Module, plan: "TokenPlan", config: ExpandConfig) -> tuple[Tensor, Tensor | None, str]:
    """The output rows [k, d] (and bias [k]) that apply_plan would write, without copying the model."""
    layout = resize.embedding_layout(model)
    tied = stays_tied(layout, config)
    strategy = effective_strategies(tied, config)[1]
    head = layout.output.weight.data
    if tied:  # a tied row is written through the input matrix, with the input's generator
        request = row_request(model, plan.tokens_before, plan.pieces, config, "input")
    else:
        request = row_request(model, plan.tokens_before, plan.pieces, config, "output")
    rows = strategy.rows(head, request)
    bias = strategy.bias(layout.output.bias.data, request) if layout.has_bias else None
    return rows, bias, strategy.name


@torch.no_grad()
def grow_embeddings(model: nn.Module, tokens_before: int, pieces: list[list[int]], config: ExpandConfig) -> dict[str, Any]:
    """Grow the model's matrices in place for len(pieces) new tokens; returns the row facts for the report."""
    layout = resize.embedding_layout(model)
    plan = resize.plan_rows(layout.input.weight.shape[0], tokens_before, len(pieces), config.pad_to_multiple_of)
    tied = stays_tied(layout, config)
    if layout.tied and not tied:
        resize.untie(model, layout)
    input_strategy, output_strategy = effective_strategies(tied, config)
    old_input = layout.input.weight
    request = row_request(model, tokens_before, pieces, config, "input")
    resize.set_weight(layout.input, resize.fill_new_rows(old_input.data, plan, input_strategy, request), old_input)
    if tied:
        layout.output.weight = layout.input.weight
        layout.output.out_features = plan.new_rows
    elif layout.output is not None:
        request = row_request(model, tokens_before, pieces, config, "output")
        old_output = layout.output.weight
        resize.set_weight(layout.output, resize.fill_new_rows(old_output.data, plan, output_strategy, request), old_output)
        if layout.has_bias:
            new_bias = resize.fill_new_rows(layout.output.bias.data, plan, output_strategy, request, is_bias=True)
            layout.output.bias = nn.Parameter(new_bias, requires_grad=layout.output.bias.requires_grad)
    resize.set_vocab_size(model, plan.new_rows)
    return {
        "rows_before": plan.old_rows,
        "rows_after": plan.new_rows,
        "reused_spare_rows": plan.reused_spare_rows,
        "padding_rows": len(plan.padding_ids),
        "tied": tied,
        "input_strategy": input_strategy.name,
        "output_strategy": output_strategy.name,
        "hewitt_bound_nats": hewitt_bound(len(pieces) + len(plan.padding_ids), tokens_before),
    }


def hewitt_bound(k: int, n: int) -> float:
    """log(1 + k/n): the most KL(old || new) that k mean-initialized output rows can cost, over n tokens."""
    return math.log1p(k / n) if n else float("inf")
