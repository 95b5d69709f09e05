"""What trains and at what rate: freezing per mode, LoRA adapters with the new rows as trainable tokens
(PEFT), the AdamW parameter groups, and the new rows' own rate in every mode.

The new rows' rate: in "lora" mode the new rows are PEFT's trainable-token deltas, their own parameters, so they
get their own parameter group. In the other modes they are rows of the embedding matrices, which share one
parameter with the old rows; there the update of the new rows is scaled by lr_new_rows / learning_rate after
each step. Adam's moment estimates do not depend on the rate, so this equals a parameter group at lr_new_rows,
decoupled weight decay included.

Left out: the loop (loop.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from ..errors import InvalidInputError, MissingResourceError
from ..handoff import recommended_lora
from .config import TrainConfig, TrainMode


def set_trainable(model: nn.Module, mode: TrainMode, first_new: int) -> list[nn.Parameter]:
    """Freeze what ``mode`` does not train; for "new_rows", mask the gradients of old rows (the effect of PEFT's
    trainable tokens without the dependency). Returns the trainable parameters."""
    embeddings = {id(model.get_input_embeddings().weight), id(model.get_output_embeddings().weight)}
    for p in model.parameters():
        p.requires_grad_(mode == "full" or id(p) in embeddings)
    if mode == "new_rows":
        for p in {id(p): p for p in model.parameters() if id(p) in embeddings}.values():
            mask = torch.zeros(p.shape[0], 1, dtype=p.dtype)
            mask[first_new:] = 1
            p.register_hook(lambda grad, mask=mask: grad * mask.to(grad.device))
    return [p for p in model.parameters() if p.requires_grad]


def embedding_weights(model: nn.Module) -> list[nn.Parameter]:
    """The distinct embedding matrices (one when tied)."""
    found = [model.get_input_embeddings().weight, model.get_output_embeddings().weight]
    return list({id(p): p for p in found}.values())


def lora_targets(config: TrainConfig) -> str | list[str]:
    """PEFT's target_modules from config.lora_target_modules: "all-linear" (PEFT's keyword) or the list of the
    comma-separated names. Example: "q_proj, v_proj" -> ["q_proj", "v_proj"]."""
    names = config.lora_target_modules
    return names if names == "all-linear" else [t.strip() for t in names.split(",") if t.strip()]


def check_lora_targets(model: nn.Module, config: TrainConfig) -> None:
    """InvalidInputError, before any run folder is touched, when train="lora" names a target module that matches
    no module of ``model`` (PEFT matches a name or the end of a dotted path); lists the names that would work."""
    targets = lora_targets(config)
    if config.train != "lora" or targets == "all-linear":
        return
    paths = [name for name, _ in model.named_modules() if name]
    missing = [t for t in targets if not any(p == t or p.endswith("." + t) for p in paths)]
    if missing or not targets:
        linear = sorted({name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, nn.Linear)})
        raise InvalidInputError(f"--lora-target-modules: {', '.join(missing) or 'none given'} matches no module of "
                                f"this model; choose from {', '.join(linear)} or all-linear")


def with_lora(model: nn.Module, config: TrainConfig, new_ids: list[int]) -> nn.Module:
    """The model with LoRA adapters and the new rows as PEFT trainable tokens (handoff.recommended_lora)."""
    try:
        from peft import LoraConfig, get_peft_model
    except ModuleNotFoundError as err:
        raise MissingResourceError("train='lora' needs PEFT: pip install peft") from err
    options = recommended_lora(model, new_ids, r=config.lora_r, lora_alpha=config.lora_alpha,
                               target_modules=lora_targets(config))
    torch.manual_seed(config.seed)  # LoRA's A matrices are random: the same draw for every strategy and resume
    return get_peft_model(model, LoraConfig(**options))


@dataclass
class Trainable:
    """The model to train (wrapped for LoRA), its optimizer, and ``update(lr)``, which makes one step."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    update: Callable[[float], None]


def prepare(model: nn.Module, config: TrainConfig, first_new: int, vocabulary: int) -> Trainable:
    """Freeze, wrap and group the parameters for ``config.train``; the new rows [first_new, vocabulary) train at
    config.new_rows_rate."""
    if config.train == "lora":
        model = with_lora(model, config, list(range(first_new, vocabulary)))
        params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        rows = [p for n, p in params if "trainable_tokens_delta" in n]
        groups = [{"params": [p for n, p in params if "trainable_tokens_delta" not in n]},
                  {"params": rows, "lr": config.new_rows_rate}]
        optimizer = torch.optim.AdamW(groups, lr=config.learning_rate, weight_decay=config.weight_decay)
        return Trainable(model, optimizer, lambda lr: optimizer.step())
    params = set_trainable(model, config.train, first_new)
    # new_rows: AdamW's decoupled decay would shrink the frozen old rows too (it does not look at gradients), so
    # the embedding matrices get no decay there and decay_new_rows applies it to the new rows only.
    frozen_rows = config.train == "new_rows"
    embeddings = embedding_weights(model)
    groups = [{"params": [p for p in params if not (frozen_rows and any(p is e for e in embeddings))]},
              {"params": embeddings if frozen_rows else [], "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=config.learning_rate,
                                  weight_decay=config.weight_decay)
    ratio = config.new_rows_rate / config.learning_rate

    def update(lr: float) -> None:
        with scaled_rows(embeddings, first_new, ratio):
            if frozen_rows:
                decay_new_rows(embeddings, first_new, lr, config.weight_decay)
            optimizer.step()

    return Trainable(model, optimizer, update)


class scaled_rows:
    """Context: the change made inside it to rows first_new: of each matrix is scaled by ``ratio`` (no copy when
    ratio is 1)."""

    def __init__(self, matrices: list[nn.Parameter], first_new: int, ratio: float):
        self.matrices, self.first_new, self.ratio = matrices, first_new, ratio

    def __enter__(self) -> None:
        self.before = [m.detach()[self.first_new:].clone() for m in self.matrices] if self.ratio != 1 else []

    @torch.no_grad()
    def __exit__(self, *exc) -> None:
        for m, old in zip(self.matrices, self.before):
            m[self.first_new:] = old + (m[self.first_new:] - old) * self.ratio


@torch.no_grad()
def decay_new_rows(embeddings: list[nn.Parameter], first_new: int, lr: float, weight_decay: float) -> None:
    """AdamW's decoupled weight decay, p <- p (1 - lr wd), on rows first_new: only (new_rows training)."""
    for p in embeddings:
        p[first_new:].mul_(1 - lr * weight_decay)
