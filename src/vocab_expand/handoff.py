"""Hand-off to fine-tuning: a PEFT LoraConfig that trains LoRA adapters plus exactly the new rows.

Models of 7B and more are fine-tuned with LoRA, and LoRA alone cannot teach new tokens: their rows must train
too. PEFT's trainable tokens (`LoraConfig(trainable_token_indices=...)`) train only chosen rows, stored as a
[k, d] delta per matrix, so the adapter holds the LoRA weights and k rows per matrix rather than whole
embedding matrices (the adapters as large as the model of unsloth #1093), and it reloads onto the expanded
model saved by vocab-expand (peft #1300, #2898). A tied model gets one list of ids: PEFT trains the shared row
once, for both sides. An untied head gets its own entry, so that the model learns to emit the new tokens.

From a saved folder, the ids and module names come from its expansion.json. The one workaround for TRL
(expose_head_bias) is applied by lora_config, before the model is wrapped.

Left out: training itself (your Trainer or TRL script; `vocab-expand compare` for the measured comparison).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn

from .rows.layout import embedding_layout

if TYPE_CHECKING:
    from peft import LoraConfig

    from .expansion import Expansion

# PEFT's "all-linear": every linear layer except the output head, whose new rows train as tokens instead.
DEFAULT_TARGETS = "all-linear"
DEFAULT_RANK = 16


def module_name(model: nn.Module, module: nn.Module) -> str:
    """The qualified name of ``module`` inside ``model`` ("model.embed_tokens"); KeyError if absent."""
    for name, candidate in model.named_modules():
        if candidate is module:
            return name
    raise KeyError(f"{type(module).__name__} is not a submodule of the model")


def trainable_token_indices(model: nn.Module, new_token_ids: list[int]) -> list[int] | dict[str, list[int]]:
    """PEFT's trainable_token_indices for the new ids: a list for a tied model (the shared row trains once), a
    dict naming the input embedding and the head for an untied one. E.g. untied Llama, ids [400, 401] ->
    {"model.embed_tokens": [400, 401], "lm_head": [400, 401]}."""
    layout = embedding_layout(model)
    untied = layout.output is not None and not layout.tied
    modules = (module_name(model, layout.input), module_name(model, layout.output)) if untied else None
    return token_indices(new_token_ids, modules)


def token_indices(new_token_ids: list[int], modules: tuple[str, str] | None) -> list[int] | dict[str, list[int]]:
    """trainable_token_indices from the names of the (input, head) modules of an untied model, or None for a
    tied one (or one without a head). E.g. ([400], ("model.embed_tokens", "lm_head")) ->
    {"model.embed_tokens": [400], "lm_head": [400]}."""
    ids = [int(i) for i in new_token_ids]
    return ids if modules is None else {name: ids for name in modules}


def recommended_lora(model: nn.Module, new_token_ids: list[int], **options: Any) -> dict[str, Any]:
    """The keyword arguments of peft.LoraConfig for this expansion, as JSON data (kept in expansion.json);
    ``options``: r, lora_alpha, target_modules (see lora_arguments)."""
    return lora_arguments(trainable_token_indices(model, new_token_ids), **options)


def lora_arguments(indices: list[int] | dict[str, list[int]], *, r: int = DEFAULT_RANK, lora_alpha: int | None = None,
                   target_modules: str | list[str] = DEFAULT_TARGETS) -> dict[str, Any]:
    """peft.LoraConfig's keyword arguments for these trainable token indices, as JSON data. lora_alpha defaults
    to 2r, the common choice that keeps the update scale constant across ranks."""
    if not isinstance(r, int) or isinstance(r, bool) or r < 1:
        from .errors import InvalidInputError

        raise InvalidInputError(f"r must be a positive int, got {r!r}")
    return {"r": r, "lora_alpha": 2 * r if lora_alpha is None else lora_alpha, "target_modules": target_modules,
            "trainable_token_indices": indices, "task_type": "CAUSAL_LM"}


def lora_config(expansion: "Expansion | str | os.PathLike", *, r: int = DEFAULT_RANK, lora_alpha: int | None = None,
                target_modules: str | list[str] = DEFAULT_TARGETS, **options: Any) -> "LoraConfig":
    """A peft.LoraConfig whose trainable_token_indices hold exactly the new ids of ``expansion`` (input
    embedding, and the head when it is untied); other LoraConfig options pass through (lora_dropout, ...).

    ``expansion``: the Expansion that expand returned, or the folder it was saved to (its expansion.json holds
    the ids and the module names). Also makes PEFT's trainable-token head readable by TRL (expose_head_bias).
    """
    try:
        from peft import LoraConfig
    except ModuleNotFoundError as err:
        from .errors import MissingResourceError

        raise MissingResourceError("lora_config needs PEFT: pip install peft") from err
    expose_head_bias()
    indices = saved_token_indices(Path(expansion)) if isinstance(expansion, (str, os.PathLike)) else (
        expansion_token_indices(expansion))
    kwargs = lora_arguments(indices, r=r, lora_alpha=lora_alpha, target_modules=target_modules)
    return LoraConfig(**kwargs | options)


def expansion_token_indices(expansion: object) -> list[int] | dict[str, list[int]]:
    """trainable_token_indices of an in-memory Expansion; a one-line error for anything else (a model, say)."""
    model, ids = getattr(expansion, "model", None), getattr(expansion, "new_token_ids", None)
    if not isinstance(model, nn.Module) or ids is None:
        from .errors import InvalidTypeError

        raise InvalidTypeError(f"lora_config takes what expand returned or the folder it was saved to, not "
                               f"{type(expansion).__name__}")
    return trainable_token_indices(model, ids)


def saved_token_indices(folder: Path) -> list[int] | dict[str, list[int]]:
    """trainable_token_indices recorded in ``folder``/expansion.json (written by Expansion.save and
    expand_checkpoint); one-line errors for a folder without it or an expansion that added nothing."""
    from .errors import CorruptFileError, MissingResourceError, NothingAddedError

    path = folder / "expansion.json"
    if not path.is_file():
        raise MissingResourceError(f"{folder} holds no expansion.json: pass a folder saved by vocab-expand, or the "
                                   "Expansion that expand returned")
    try:
        lora = json.loads(path.read_text(encoding="utf-8"))["fine_tuning"]["peft_lora"]
    except (ValueError, KeyError, TypeError) as err:
        raise CorruptFileError(f"cannot read the fine-tuning entry of {path} ({err})") from err
    if not lora:
        raise NothingAddedError(f"{folder} was saved without new tokens: there are no rows to train")
    return lora["trainable_token_indices"]


def expose_head_bias() -> None:
    """Let PEFT's trainable-token wrapper answer ``.bias`` as its wrapped layer does (idempotent).

    TRL's SFTTrainer (1.x) computes the loss with a fused LM head that reads ``lm_head.weight`` and
    ``lm_head.bias`` from ``get_output_embeddings()`` (trl/trainer/utils.py, add_fused_lm_head). With
    ``trainable_token_indices`` the head is PEFT's TrainableTokensWrapper (tied models: always; untied: the
    head's own entry), whose ``__getattr__`` forwards only ``weight`` (the merged rows, so gradients reach
    the new rows) while an adapter is active, and raises AttributeError for ``bias`` at step 0. PEFT fixed the
    same gap for LoRA layers (peft #1524, #1530); for trainable tokens it stays open (peft 0.21.2; the
    related #3649, where the wrapper's own forward drops a head bias, is not fixed either). The bias is the
    wrapped layer's (None for most heads): trainable tokens change rows, never the bias.
    """
    from peft.utils.other import TrainableTokensWrapper

    if getattr(TrainableTokensWrapper, "_vocab_expand_bias", False):
        return
    forwards, reads = TrainableTokensWrapper._hasattr_wrapped, TrainableTokensWrapper._getattr_wrapped

    def hasattr_wrapped(self: Any, name: str, modules: Any) -> bool:
        return forwards(self, name, modules) or (name == "bias" and hasattr(self.token_adapter.base_layer, "bias"))

    def getattr_wrapped(self: Any, name: str, modules: Any) -> Any:
        if name == "bias" and not forwards(self, name, modules):
            return self.token_adapter.base_layer.bias
        return reads(self, name, modules)

    TrainableTokensWrapper._hasattr_wrapped = hasattr_wrapped
    TrainableTokensWrapper._getattr_wrapped = getattr_wrapped
    TrainableTokensWrapper._vocab_expand_bias = True
