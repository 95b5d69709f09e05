"""Model surgery: grow the model's matrices in place for computed new rows (tied, untied, biased and padded
layouts), and update its config.

Left out: the tensor-level row plans and copies (resize.py); computing the rows (rows.py).
"""

from __future__ import annotations

from typing import Any, Sequence

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
