"""The arithmetic of the embedding and the output head on their own, for models that do not have the new rows
yet: feeding new input rows (a scaled lookup, as Gemma's sqrt(d)), and scoring new output rows against hidden
states as the model would (bias, Gemma-2-style soft-capping).

Used by the forward pass (forward.py), distillation and the fit (strategies/) and diagnose.

Left out: running the model (forward.py); which rows (strategies/).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def softcap(model: nn.Module) -> float | None:
    """The model's final logit soft-capping value (Gemma 2 style), if any."""
    value = getattr(model.config.get_text_config(), "final_logit_softcapping", None)
    return float(value) if value else None


def head_logits(model: nn.Module, hidden: Tensor, rows: Tensor, bias: Tensor | None = None) -> Tensor:
    """Logits of output ``rows`` [k, d] for ``hidden`` [P, d], as the model computes them (bias, soft-cap)."""
    logits = hidden @ rows.to(device=hidden.device, dtype=torch.float32).T
    if bias is not None:
        logits = logits + bias.to(device=hidden.device, dtype=torch.float32)
    return capped(logits, softcap(model))


def paired_logits(model: nn.Module, hidden: Tensor, rows: Tensor, bias: Tensor | None = None) -> Tensor:
    """The logit of row i of ``rows`` [P, d] for hidden state i of ``hidden`` [P, d] -> [P], as the model
    computes it (bias [P], soft-cap): one logit per position, where head_logits gives every pair."""
    logits = (hidden * rows.to(device=hidden.device, dtype=torch.float32)).sum(-1)
    if bias is not None:
        logits = logits + bias.to(device=hidden.device, dtype=torch.float32)
    return capped(logits, softcap(model))


def capped(logits: Tensor, cap: float | None) -> Tensor:
    """Gemma-2-style soft-capping cap * tanh(logits / cap); the logits themselves when cap is None."""
    return torch.tanh(logits / cap) * cap if cap else logits


def embedding_scale(module: nn.Embedding) -> float:
    """The factor s with module(i) == s * weight[i] (Gemma scales by sqrt(d)); a clear error if it is not a
    scaled lookup, since new rows are then fed as inputs_embeds."""
    probe = int(module.weight.detach().norm(dim=1).argmax())
    row = module.weight.detach()[probe].to(torch.float32)
    out = module(torch.tensor([probe], device=module.weight.device))[0].detach().to(torch.float32)
    scale = float(out @ row / (row @ row))
    if not torch.allclose(out, scale * row, rtol=1e-3, atol=1e-6):
        raise TypeError(f"{type(module).__name__} is not a (scaled) lookup of its weight rows; "
                        "fit and distill need one to feed new input rows")
    return scale


def embed_with_rows(model: nn.Module, ids: Tensor, rows: Tensor, tokens_before: int, scale: float | None = None) -> Tensor:
    """Input embeddings [B, T, d] of ``ids`` for a model without the new rows: ids >= tokens_before take ``rows``
    [k, d] (gradients flow to ``rows`` only), older ids the model's own rows."""
    module = model.get_input_embeddings()
    scale = embedding_scale(module) if scale is None else scale
    is_new = ids >= tokens_before
    old = module(torch.where(is_new, torch.zeros_like(ids), ids))
    new = rows.to(old.device)[(ids - tokens_before).clamp_min(0).to(old.device)] * scale
    return torch.where(is_new.unsqueeze(-1), new.to(old.dtype), old)
