"""Writing new rows into a model: grow the model's matrices in place for computed new rows (tied, untied, biased and padded
layouts), and update its config; or grow them only for the length of a `with` block (`grown_for`: diagnose
generates with each strategy's rows without copying the model). The tensor half (grown_matrices, row_figures) also
serves checkpoint.py, which grows the stored tensors without building the model.

Left out: the tensor-level row plans and copies (rows/layout.py); computing the rows (rows/compute.py);
the report (report.py, from the RowFigures returned here).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import torch
from torch import Tensor, nn

from ..config import ExpandConfig
from ..metrics import hewitt_bound
from .layout import (RowPlan, embedding_layout, fill_new_rows, overwrite_rows, plan_rows, set_vocab_size,
                     set_weight, untie)
from .compute import NewRows


@dataclass
class GrownMatrices:
    """The grown tensors: input [rows, d]; output [rows, d] when the head has its own matrix (None when it
    shares the input's, or there is none); bias [rows] or None; plan: where the rows went."""

    input: Tensor
    output: Tensor | None
    bias: Tensor | None
    plan: RowPlan


def grown_matrices(old_input: Tensor, old_output: Tensor | None, old_bias: Tensor | None, tokens_before: int,
                   rows: NewRows, pad_to_multiple_of: int | None, reused_ids: Sequence[int] = ()) -> GrownMatrices:
    """The matrices grown for ``rows``, in their own dtype. ``old_output``: the head's own matrix (a copy of
    the input when a tied model is untied), None when the rows stay tied or there is no head. Without growth
    the spare rows are written in place (callers pass their own copies). The first len(reused_ids) rows
    overwrite the rows of those ids (reused reserved tokens); the rest go from tokens_before on."""
    r = len(reused_ids)
    plan = plan_rows(old_input.shape[0], tokens_before, rows.input.shape[0] - r, pad_to_multiple_of)

    def grow(old: Tensor, new: Tensor, is_bias: bool = False) -> Tensor:
        filled = fill_new_rows(old, plan, new[r:], is_bias=is_bias)
        return overwrite_rows(filled, reused_ids, new[:r])

    new_input = grow(old_input, rows.input)
    output = grow(old_output, rows.output) if old_output is not None else None
    bias = grow(old_bias, rows.bias, is_bias=True) if old_bias is not None else None
    return GrownMatrices(new_input, output, bias, plan)


@torch.no_grad()
def grow_embeddings(model: nn.Module, tokens_before: int, rows: NewRows, config: ExpandConfig, *,
                    reused_ids: Sequence[int] = ()) -> RowFigures:
    """Grow the model's matrices in place for the new rows; returns the row figures for the report.

    The first len(reused_ids) rows overwrite the rows of those ids (reused reserved tokens); the rest are
    appended from tokens_before on (spare rows first).
    """
    layout = embedding_layout(model)
    parameters_before = parameter_count(model)
    if layout.tied and not rows.tied:
        untie(model, layout)
    own_head = layout.output is not None and not rows.tied
    grown = grown_matrices(layout.input.weight.data, layout.output.weight.data if own_head else None,
                           layout.output.bias.data if own_head and layout.has_bias else None, tokens_before, rows,
                           config.pad_to_multiple_of, reused_ids)
    set_weight(layout.input, grown.input, layout.input.weight)
    if rows.tied:
        layout.output.weight = layout.input.weight
        layout.output.out_features = grown.plan.new_rows
    elif grown.output is not None:
        set_weight(layout.output, grown.output, layout.output.weight)
        if grown.bias is not None:
            layout.output.bias = nn.Parameter(grown.bias, requires_grad=layout.output.bias.requires_grad)
    set_vocab_size(model, grown.plan.new_rows)
    return row_figures(grown.plan, rows, len(reused_ids), parameters_before, parameter_count(model))


@dataclass(frozen=True)
class RowFigures:
    """What the growth did, for the report (expansion.json writes these fields in this order): row counts before
    and after, spare rows and reserved tokens reused, padding rows, the tie, the strategies that ran, the Hewitt
    bound of the rows added, and parameter counts."""

    rows_before: int
    rows_after: int
    reused_spare_rows: int
    reused_reserved_tokens: int
    padding_rows: int
    tied: bool
    input_strategy: str
    output_strategy: str
    hewitt_bound_nats: float
    parameters_before: int
    parameters_after: int
    parameters_added: int


def row_figures(plan: RowPlan, rows: NewRows, reused: int, parameters_before: int,
                parameters_after: int) -> RowFigures:
    """The figures of one growth: ``plan`` (where the rows went), the ``rows`` written, ``reused`` reserved ids."""
    return RowFigures(
        rows_before=plan.old_rows,
        rows_after=plan.new_rows,
        reused_spare_rows=plan.reused_spare_rows,
        reused_reserved_tokens=reused,
        padding_rows=len(plan.padding_ids),
        tied=rows.tied,
        input_strategy=rows.input_strategy,
        output_strategy=rows.output_strategy,
        hewitt_bound_nats=hewitt_bound(rows.input.shape[0] + len(plan.padding_ids), plan.tokens_before),
        parameters_before=parameters_before,
        parameters_after=parameters_after,
        parameters_added=parameters_after - parameters_before,
    )


def parameter_count(model: nn.Module) -> int:
    """Parameters of the model, a tied matrix counted once (model.parameters() yields each Parameter once)."""
    return sum(p.numel() for p in model.parameters())


@contextmanager
def grown_for(model: nn.Module, tokens_before: int, rows: NewRows, config: ExpandConfig, *,
              reused_ids: Sequence[int] = ()) -> Iterator[RowFigures]:
    """grow_embeddings for the length of a ``with`` block (yielding its row figures), then the model exactly as
    before, also when the block raises: the same Parameter objects with the same values (a tied model tied
    again), row counts, ``out_features``, config ``vocab_size`` and ``tie_word_embeddings``. Costs grown copies
    of the embedding matrices while the block runs, never a copy of the whole model."""
    saved = _Saved.take(model, tokens_before, reused_ids)
    try:
        yield grow_embeddings(model, tokens_before, rows, config, reused_ids=reused_ids)
    finally:
        saved.restore()


_ABSENT = object()


@dataclass
class _Saved:
    """What grow_embeddings may change: the modules' Parameters and sizes, the rows it may write in place (spare
    rows past the tokenizer, reused reserved ids) and the config fields."""

    modules: list[tuple[nn.Module, str, Any]]  # (module, attribute, value before)
    rows: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]  # (tensor, ids, their values before)
    configs: list[tuple[Any, str, Any]]

    @classmethod
    @torch.no_grad()
    def take(cls, model: nn.Module, tokens_before: int, reused_ids: Sequence[int]) -> "_Saved":
        layout = embedding_layout(model)
        inp, out = layout.input, layout.output
        modules: list[tuple[nn.Module, str, Any]] = [(inp, "weight", inp.weight),
                                                     (inp, "num_embeddings", inp.num_embeddings)]
        tensors = [inp.weight.data]
        if out is not None:
            modules += [(out, "weight", out.weight), (out, "out_features", out.out_features),
                        (out, "bias", out.bias)]
            tensors += [out.weight.data] + ([out.bias.data] if out.bias is not None else [])
        touched = sorted(set(range(tokens_before, inp.weight.shape[0])) | set(reused_ids))
        ids = torch.tensor(touched, dtype=torch.long, device=inp.weight.device)
        rows = [(t, ids.to(t.device), t[ids.to(t.device)].clone()) for t in tensors] if touched else []
        text = model.config.get_text_config()
        configs = [(c, name, getattr(c, name, _ABSENT)) for c in {id(c): c for c in (model.config, text)}.values()
                   for name in ("vocab_size", "tie_word_embeddings")]
        configs += [(model, "vocab_size", model.vocab_size)] if hasattr(model, "vocab_size") else []
        return cls(modules, rows, configs)

    @torch.no_grad()
    def restore(self) -> None:
        for module, name, value in self.modules:
            setattr(module, name, value)
        for tensor, ids, values in self.rows:
            tensor[ids] = values
        for holder, name, value in self.configs:
            if value is _ABSENT:
                if name in vars(holder):
                    delattr(holder, name)
            else:
                setattr(holder, name, value)
