"""Model surgery: grow the model's matrices in place for computed new rows (tied, untied, biased and padded
layouts), and update its config; or grow them only for the length of a `with` block (`grown_for`: diagnose
generates with each strategy's rows without copying the model).

Left out: the tensor-level row plans and copies (resize.py); computing the rows (rows.py).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import torch
from torch import nn

from . import resize
from .config import ExpandConfig
from .metrics import hewitt_bound
from .rows import NewRows


@torch.no_grad()
def grow_embeddings(model: nn.Module, tokens_before: int, rows: NewRows, config: ExpandConfig, *,
                    reused_ids: Sequence[int] = ()) -> dict[str, Any]:
    """Grow the model's matrices in place for the new rows; returns the row facts for the report.

    The first len(reused_ids) rows overwrite the rows of those ids (reused reserved tokens); the rest are
    appended from tokens_before on (spare rows first).
    """
    layout = resize.embedding_layout(model)
    parameters_before = parameter_count(model)
    r = len(reused_ids)
    k = rows.input.shape[0] - r
    plan = resize.plan_rows(layout.input.weight.shape[0], tokens_before, k, config.pad_to_multiple_of)
    if layout.tied and not rows.tied:
        resize.untie(model, layout)
    old_input = layout.input.weight
    new_input = resize.fill_new_rows(old_input.data, plan, rows.input[r:])
    resize.set_weight(layout.input, resize.overwrite_rows(new_input, reused_ids, rows.input[:r]), old_input)
    if rows.tied:
        layout.output.weight = layout.input.weight
        layout.output.out_features = plan.new_rows
    elif layout.output is not None:
        old_output = layout.output.weight
        new_output = resize.fill_new_rows(old_output.data, plan, rows.output[r:])
        resize.set_weight(layout.output, resize.overwrite_rows(new_output, reused_ids, rows.output[:r]), old_output)
        if layout.has_bias:
            new_bias = resize.fill_new_rows(layout.output.bias.data, plan, rows.bias[r:], is_bias=True)
            new_bias = resize.overwrite_rows(new_bias, reused_ids, rows.bias[:r])
            layout.output.bias = nn.Parameter(new_bias, requires_grad=layout.output.bias.requires_grad)
    resize.set_vocab_size(model, plan.new_rows)
    parameters_after = parameter_count(model)
    return {
        "rows_before": plan.old_rows,
        "rows_after": plan.new_rows,
        "reused_spare_rows": plan.reused_spare_rows,
        "reused_reserved_tokens": r,
        "padding_rows": len(plan.padding_ids),
        "tied": rows.tied,
        "input_strategy": rows.input_strategy,
        "output_strategy": rows.output_strategy,
        "hewitt_bound_nats": hewitt_bound(rows.input.shape[0] + len(plan.padding_ids), tokens_before),
        "parameters_before": parameters_before,
        "parameters_after": parameters_after,
        "parameters_added": parameters_after - parameters_before,
    }


def parameter_count(model: nn.Module) -> int:
    """Parameters of the model, a tied matrix counted once (model.parameters() yields each Parameter once)."""
    return sum(p.numel() for p in model.parameters())


@contextmanager
def grown_for(model: nn.Module, tokens_before: int, rows: NewRows, config: ExpandConfig, *,
              reused_ids: Sequence[int] = ()) -> Iterator[dict[str, Any]]:
    """grow_embeddings for the length of a ``with`` block (yielding its row facts), then the model exactly as
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
        layout = resize.embedding_layout(model)
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
