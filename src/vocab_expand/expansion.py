"""`expand`: add words to a model and its tokenizer in one call, and report what was done.

Pipeline: plan the tokens (planning.py), compute the rows (rows/compute.py, with learning/ for data-driven
strategies), grow the matrices and update the config (rows/grow.py), and report (report.expansion_record, with
the peak memory of the call, memory.py). The caller's objects are untouched unless inplace=True.

`expand` and `apply_plan` are the public edge: each resolves its inputs once (the corpus to its train documents,
"auto" to strategies, the pair checked) and hands them to `grow_model`, which takes them as they are.

Left out: each step's work (the modules above); loading and saving (loading.py, io.py); measuring the result
(diagnostics.py).
"""

from __future__ import annotations

import copy
import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable, Sequence

import torch
from torch import Tensor, nn
from transformers import PreTrainedTokenizerBase

from .config import ExpandConfig
from .corpus import train_documents
from .errors import NothingAddedError, NotFiniteError
from .io import atomic_directory, write_json
from .handoff import recommended_lora
from .memory import peak_memory
from .metrics import hewitt_bound
from .planning import TokenPlan, plan_tokens
from .report import expansion_record, saved_record
from .rows.compute import NewRows, compute_rows, new_rows
from .rows.grow import grow_embeddings
from .rows.layout import embedding_layout
from .rows.policy import check_strategies
from .serving import finish_folder, model_matrices
from .tokenization import Skipped

if TYPE_CHECKING:
    from .corpus import Corpus
    from .strategies import Strategy

__all__ = ["Expansion", "apply_plan", "expand", "hewitt_bound", "plan_tokens", "TokenPlan", "NewRows", "new_rows",
           "grow_embeddings", "check_strategies"]


@dataclass
class Expansion:
    """The result of :func:`expand`.

    new_tokens: the vocabulary strings added ("ĠJehoshaphat"), in id order; new_token_ids: their ids;
    words: the word each new token stands for; pieces: the old ids each new token replaces;
    skipped: (word, reason) for every word not added; report: counts, strategies, timings, peak memory, config.
    """

    model: nn.Module
    tokenizer: PreTrainedTokenizerBase
    new_tokens: list[str]
    new_token_ids: list[int]
    words: list[str]
    pieces: list[list[int]]
    skipped: list[Skipped]
    report: dict[str, Any] = field(default_factory=dict)

    def save(self, path: str | os.PathLike, *, force: bool = False, allow_empty: bool = False,
             inputs: Sequence[str | os.PathLike] = ()) -> None:
        """Write model, tokenizer and expansion.json to ``path`` atomically (a temporary folder, then rename).

        The folder loads with plain AutoModelForCausalLM/AutoTokenizer.from_pretrained, no custom code.
        An existing folder is only replaced with force=True. When every word was skipped, nothing is saved
        (NothingAddedError) unless allow_empty=True: an unchanged copy of the model is rarely what was meant.
        ``inputs``: paths (the model folder, the corpus) that the output may not be, contain or sit inside.
        A model whose new rows hold inf or nan is never saved (NotFiniteError).
        """
        require_added(self.new_tokens, self.skipped, allow_empty)
        layout = embedding_layout(self.model)
        require_finite_rows([layout.input.weight, None if layout.output is None else layout.output.weight],
                            self.new_token_ids)
        with atomic_directory(path, force=force, inputs=inputs) as tmp:
            self.model.save_pretrained(tmp)
            self.tokenizer.save_pretrained(tmp)
            self.report = saved_record(self.report, finish_folder(tmp, self.report, model_matrices(self.model)))
            write_json(tmp / "expansion.json", self.report)


def apply_plan(model: nn.Module, plan: TokenPlan, config: ExpandConfig, rows: "NewRows | None" = None, *,
               corpus: "Corpus | Sequence[str] | None" = None, progress: bool = False) -> Expansion:
    """Grow the model's matrices for a token plan (on a copy unless config.inplace). ``rows`` reuses rows
    computed before (new_rows); otherwise they are computed here, from ``corpus`` for fit and distill."""
    documents = train_documents(corpus)  # a path or alias is loaded, never read as one-character documents
    config = config.resolved(documents is not None)
    pair = check_strategies(model, config, documents is not None) if rows is None else None
    return grow_model(model, plan, config, pair, documents, rows, progress=progress)


def grow_model(model: nn.Module, plan: TokenPlan, config: ExpandConfig, pair: "tuple[Strategy, Strategy] | None",
               documents: Sequence[str] | None, rows: "NewRows | None" = None, *, progress: bool = False) -> Expansion:
    """apply_plan on resolved inputs: ``config`` resolved, ``pair`` from check_strategies (None when ``rows``
    are given), ``documents`` the train documents (None without text)."""
    start = time.perf_counter()
    with peak_memory() as peak:
        rows = rows if rows is not None else compute_rows(model, plan, config, pair, documents, progress=progress)
        new_model = model if config.inplace else copy.deepcopy(model)
        reused = [i for i in plan.new_token_ids if i < plan.tokens_before]
        figures = grow_embeddings(new_model, plan.tokens_before, rows, config, reused_ids=reused)
    lora = recommended_lora(new_model, plan.new_token_ids) if plan.entries else None
    record = expansion_record(plan, figures, config, method="model", seconds=time.perf_counter() - start, lora=lora,
                              learned=rows.details, peak=peak)
    return Expansion(
        model=new_model,
        tokenizer=plan.tokenizer,
        new_tokens=[e.token for e in plan.entries],
        new_token_ids=list(plan.new_token_ids),
        words=[e.word for e in plan.entries],
        pieces=plan.pieces,
        skipped=list(plan.skipped),
        report=record,
    )


def require_finite_rows(matrices: Sequence[Tensor | None], ids: Sequence[int]) -> None:
    """NotFiniteError when a new row (``ids``) of any of the ``matrices`` holds inf or nan: such a model is never
    saved, whatever the options were."""
    for matrix in matrices:
        if matrix is not None and len(ids) and not bool(torch.isfinite(matrix.detach()[list(ids)]).all()):
            raise NotFiniteError("the new rows hold inf or nan, so nothing was saved; an option is out of range "
                                 "(e.g. a scale or step): rerun with the defaults")


def require_added(new_tokens: Sequence[str], skipped: Sequence[Skipped], allow_empty: bool) -> None:
    """NothingAddedError when every word was skipped, unless allow_empty: an unchanged copy of the model is
    rarely what was meant."""
    if not new_tokens and not allow_empty:
        reasons = "; ".join(f"{s.word!r}: {s.reason}" for s in skipped[:10])
        raise NothingAddedError(f"every word was skipped ({reasons}), so nothing was saved; pass "
                                "allow_empty=True (--allow-empty) to save the unchanged model anyway")


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
    whose train split is used, a path or alias such as "kjv", or documents) is the domain text that `fit` and `distill` learn from. Other ExpandConfig fields (forms, tie_policy,
    cov_scale, sample_max_positions, inplace, ...) are accepted as keyword options. Returns an
    :class:`Expansion`; words that cannot be added are reported in ``skipped``, never silently dropped.
    """
    given = dict(input_init=input_init, output_init=output_init, seed=seed, pad_to_multiple_of=pad_to_multiple_of)
    documents = train_documents(corpus)  # a path or alias is loaded, never read as one-character documents
    config = ExpandConfig(**{k: v for k, v in given.items() if v is not None}, **options).resolved(documents is not None)
    pair = check_strategies(model, config, documents is not None)  # bad choices fail before any work
    plan = plan_tokens(tokenizer, words, config, documents or ())  # portable mode picks chains that avoid its words
    return grow_model(model, plan, config, pair, documents, progress=progress)
