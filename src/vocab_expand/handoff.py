"""Hand-off to fine-tuning: a PEFT LoraConfig that trains LoRA adapters plus exactly the new rows.

Models of 7B and more are fine-tuned with LoRA, and LoRA alone cannot teach new tokens: their rows must train
too. PEFT's trainable tokens (`LoraConfig(trainable_token_indices=...)`) train only chosen rows, stored as a
[k, d] delta per matrix, so the adapter holds the LoRA weights and k rows per matrix rather than whole
embedding matrices (the adapters as large as the model of unsloth #1093), and it reloads onto the expanded
model saved by vocab-expand (peft #1300, #2898). A tied model gets one list of ids: PEFT trains the shared row
once, for both sides. An untied head gets its own entry, so that the model learns to emit the new tokens.

Left out: training itself (your Trainer or TRL script; `vocab-expand compare` for the measured comparison).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torch import nn

from .resize import embedding_layout

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


def lora_config(expansion: "Expansion", *, r: int = DEFAULT_RANK, lora_alpha: int | None = None,
                target_modules: str | list[str] = DEFAULT_TARGETS, **options: Any) -> "LoraConfig":
    """A peft.LoraConfig whose trainable_token_indices hold exactly the new ids of ``expansion`` (input
    embedding, and the head when it is untied); other LoraConfig options pass through (lora_dropout, ...)."""
    try:
        from peft import LoraConfig
    except ModuleNotFoundError as err:
        from .errors import MissingResourceError

        raise MissingResourceError("lora_config needs PEFT: pip install peft") from err
    kwargs = recommended_lora(expansion.model, expansion.new_token_ids, r=r, lora_alpha=lora_alpha,
                              target_modules=target_modules)
    return LoraConfig(**kwargs | options)
