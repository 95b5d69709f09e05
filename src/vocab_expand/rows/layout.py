"""Where new rows go in a model's matrices: the one place that knows about tied weights, heads, biases and padding.

Rules (the invariants in docs/ARCHITECTURE.md#invariants-of-a-resize):
- New token ids are consecutive from len(tokenizer). Rows of a matrix padded beyond the tokenizer
  (Qwen-style spare rows) are reused in order; the matrix only grows when they run out, and never shrinks.
- Rows of old ids are never written: the old rows are copied once, bit for bit. The one exception is asked
  for by name: reserved tokens reused as new words (reuse_reserved) get the new words' rows.
- Rows added only to reach pad_to_multiple_of get the mean row in both matrices, so padding cannot take
  probability on the output side.
- A tied model stays tied (one Parameter); an untied head, and its bias, are grown on their own.
- Statistics in float32, rows written in the matrix's dtype.

Left out: the choice of rows (rows/policy.py, strategies/), writing a whole model (rows/grow.py) and the
tokenizer (tokenization.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from .. import stats
from ..errors import InvalidInputError, InvalidTypeError


@dataclass(frozen=True)
class RowPlan:
    """Where the new rows go.

    old_rows: rows of the matrices before; tokens_before: len(tokenizer) before (the real tokens, and
    the reference rows for statistics); k: new tokens, ids tokens_before .. tokens_before + k - 1;
    new_rows: rows after (at least old_rows, at least tokens_before + k, a multiple of the padding).
    """

    old_rows: int
    tokens_before: int
    k: int
    new_rows: int

    @property
    def new_ids(self) -> range:
        return range(self.tokens_before, self.tokens_before + self.k)

    @property
    def padding_ids(self) -> range:
        """Rows created only to reach the padded size (no token uses them)."""
        return range(max(self.old_rows, self.tokens_before + self.k), self.new_rows)

    @property
    def reused_spare_rows(self) -> int:
        return max(0, min(self.old_rows, self.tokens_before + self.k) - self.tokens_before)


def check_rows_cover(old_rows: int, tokens_before: int) -> None:
    """InvalidInputError when the matrices have fewer rows than the tokenizer has tokens (a model and tokenizer
    that do not belong together); checked before any rows are computed."""
    if tokens_before > old_rows:
        raise InvalidInputError(
            f"the model has {old_rows} embedding rows but the tokenizer has {tokens_before} tokens; "
            "they must belong together (the model needs at least len(tokenizer) rows)"
        )


def plan_rows(old_rows: int, tokens_before: int, k: int, pad_to_multiple_of: int | None = None) -> RowPlan:
    """The row plan for adding k tokens to a matrix of ``old_rows`` rows and a tokenizer of ``tokens_before``."""
    check_rows_cover(old_rows, tokens_before)
    needed = max(old_rows, tokens_before + k)
    if pad_to_multiple_of:
        needed = -(-needed // pad_to_multiple_of) * pad_to_multiple_of
    return RowPlan(old_rows=old_rows, tokens_before=tokens_before, k=k, new_rows=needed)


@dataclass
class EmbeddingLayout:
    """The model's input embedding, output head (None for encoder-only heads), and whether they share storage."""

    input: nn.Embedding
    output: nn.Linear | None

    @property
    def tied(self) -> bool:
        return self.output is not None and self.output.weight is self.input.weight

    @property
    def has_bias(self) -> bool:
        return self.output is not None and getattr(self.output, "bias", None) is not None


def embedding_layout(model: nn.Module) -> EmbeddingLayout:
    """The input and output embedding modules of a transformers model; a clear error for other layouts."""
    inp = model.get_input_embeddings()
    out = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if not isinstance(inp, nn.Embedding):
        raise InvalidTypeError(f"input embeddings are {type(inp).__name__}, expected torch.nn.Embedding")
    if out is not None and not isinstance(out, nn.Linear):
        raise InvalidTypeError(f"output embeddings are {type(out).__name__}, expected torch.nn.Linear")
    if out is not None and out.weight.shape[0] != inp.weight.shape[0]:
        raise InvalidInputError(
            f"input ({inp.weight.shape[0]}) and output ({out.weight.shape[0]}) row counts differ; "
            "vocab-expand needs one vocabulary for both"
        )
    return EmbeddingLayout(input=inp, output=out)


def grown(old: Tensor, new_rows: int) -> Tensor:
    """A tensor of ``new_rows`` rows whose first rows are a bit-exact copy of ``old`` (rest uninitialized)."""
    out = torch.empty((new_rows, *old.shape[1:]), dtype=old.dtype, device=old.device)
    out[: old.shape[0]].copy_(old)
    return out


def fill_new_rows(old: Tensor, plan: RowPlan, rows: Tensor, *, is_bias: bool = False) -> Tensor:
    """``old`` [old_rows(, d)] grown to plan.new_rows, with the new tokens' ``rows`` [k(, d)] and padding rows
    from the reference mean. Old rows are untouched; spare rows past the new ones keep their values."""
    # Without growth the spare rows are reused in place (expand() already works on its own copy).
    out = grown(old, plan.new_rows) if plan.new_rows > plan.old_rows else old
    if plan.k:
        out[plan.new_ids.start : plan.new_ids.stop] = rows.to(out.dtype)
    pad = plan.padding_ids
    if len(pad):
        reference = old[: plan.tokens_before]
        mean = reference.to(torch.float32).mean() if is_bias else stats.row_mean(reference)
        out[pad.start : pad.stop] = mean.to(out.dtype)
    return out


def overwrite_rows(weight: Tensor, ids: Sequence[int], rows: Tensor) -> Tensor:
    """``weight`` with the rows (or bias entries) of ``ids`` replaced by ``rows``, in place; for reserved tokens
    reused as new words, whose old rows were placeholders."""
    if len(ids):
        weight[torch.tensor(list(ids), dtype=torch.long, device=weight.device)] = rows.to(weight.dtype)
    return weight


def set_weight(module: nn.Module, weight: Tensor, like: nn.Parameter) -> nn.Parameter:
    param = nn.Parameter(weight, requires_grad=like.requires_grad)
    module.weight = param
    if isinstance(module, nn.Embedding):
        module.num_embeddings = weight.shape[0]
    else:
        module.out_features = weight.shape[0]
    return param


def untie(model: nn.Module, layout: EmbeddingLayout) -> None:
    """Give the output head its own copy of the shared matrix and record that in the config."""
    if layout.output is None:
        raise InvalidInputError("this model has no output head to untie")
    set_weight(layout.output, layout.input.weight.detach().clone(), layout.input.weight)
    record_untied(model.config)


def record_untied(config: Any) -> None:
    """Mark a model config (and its text config) as having an untied head."""
    for each in {id(c): c for c in (config, config.get_text_config())}.values():
        each.tie_word_embeddings = False


def set_vocab_size(model: nn.Module, rows: int) -> None:
    """Record the row count in the (text) config, as transformers' own resize does."""
    record_vocab_size(model.config, rows)
    if hasattr(model, "vocab_size"):
        model.vocab_size = rows


def record_vocab_size(config: Any, rows: int) -> None:
    """Set the row count in a model config's text config (where transformers reads vocab_size)."""
    config.get_text_config().vocab_size = rows
