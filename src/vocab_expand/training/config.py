"""TrainConfig: the options of the fine-tuning runs compare makes (identical for every strategy), each default
with its reason and each value validated before any work.

Left out: running them (loop.py).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Literal, get_args

from ..errors import InvalidInputError
from ..options import check_seed, opt

TrainMode = Literal["full", "embeddings", "new_rows", "lora"]
TRAIN_MODES: tuple[str, ...] = get_args(TrainMode)
MAX_LEARNING_RATE = 10.0


@dataclass(frozen=True)
class TrainConfig:
    """Options of the fine-tuning runs :func:`vocab_expand.compare` makes (identical for every strategy)."""

    # The blog post's figure separates within a few hundred steps; 200 with an evaluation every 20 shows it.
    steps: int = opt(200, "optimizer steps per strategy")
    eval_every: int = opt(20, "evaluate on the held-out split every this many steps")
    # Full fine-tuning, as in the blog; "embeddings" trains both embedding matrices, "new_rows" only new rows;
    # "lora": LoRA adapters (PEFT) on every linear layer but the head, plus the new rows as trainable tokens,
    # which is how models of 7B and more are fine-tuned.
    train: TrainMode = opt("full", "what is trained: full, the embedding matrices, only the new rows, or LoRA "
                                   "adapters plus the new rows", choices=TRAIN_MODES)
    # A small model's usual fine-tuning rate; warm-up then linear decay to 0 at `steps`.
    learning_rate: float = opt(5e-5, "peak learning rate (warm-up, then linear decay to 0)", flag="lr")
    warmup_steps: int = opt(10, "steps of linear warm-up")
    weight_decay: float = opt(0.0, "AdamW's weight decay")
    # Gradient-norm clipping, as transformers' Trainer does by default; None turns it off. Without it, zero
    # rows on a negative-logit model (initial loss ~250 nats) diverged to NaN within 30 steps here.
    max_grad_norm: float | None = opt(1.0, "gradient clipping, as transformers' Trainer (none: off)")
    # Global batch in sequences per optimizer step (split over processes and accumulation micro-steps).
    batch_size: int = opt(8, "global sequences per step")
    gradient_accumulation: int = opt(1, "micro-steps per optimizer step")
    # Packed sequences of this many tokens (documents joined with EOS).
    seq_len: int = opt(128, "tokens per packed sequence")
    # bf16 autocast where the hardware supports it; float32 otherwise.
    bf16: bool = opt(False, "bf16 autocast where supported")
    # Held-out text scored at each evaluation (tokens of the original tokenizer).
    eval_tokens: int = opt(4000, "held-out tokens scored at each evaluation")
    # None: checkpoint at every evaluation.
    checkpoint_every: int | None = opt(None, "checkpoint every this many steps (default: at every evaluation)")
    # Stop (after a checkpoint) once this many seconds have passed; the next run resumes.
    max_time_s: float | None = opt(None, "stop after a checkpoint once this many seconds have passed; rerun to "
                                         "resume", flag="max-time")
    # Keep the final model of every strategy (RUNS/<strategy>/final/).
    save_final: bool = opt(False, "keep each strategy's final model")
    seed: int = opt(0, "seed of the data order and of LoRA's initialization")
    # The new rows' own rate, in every mode (None: learning_rate). They start far from trained rows, and LoRA
    # leaves them as the only way the model learns its new words.
    lr_new_rows: float | None = opt(None, "the new rows' own learning rate, in every mode (default: --lr)")
    # LoRA (train="lora"): rank, alpha (None: 2 * rank) and the modules adapted (PEFT's names).
    lora_r: int = opt(16, "LoRA rank")
    lora_alpha: int | None = opt(None, "LoRA alpha (default: 2 x rank)")
    lora_target_modules: str = opt("all-linear", "modules LoRA adapts, PEFT's names (comma-separated) or all-linear")

    def __post_init__(self) -> None:
        for name in ("steps", "eval_every", "batch_size", "gradient_accumulation", "seq_len", "eval_tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidInputError(f"{name} must be a positive integer, got {value!r}")
        if self.seq_len < 2:  # a sequence of one token has no next token to predict: nothing would train
            raise InvalidInputError(f"seq_len must be at least 2 (a token and the next one to predict), got {self.seq_len}")
        check_seed(self.seed)
        for name in ("learning_rate", "lr_new_rows", "weight_decay", "max_grad_norm", "max_time_s"):
            value = getattr(self, name)
            if isinstance(value, float) and not math.isfinite(value) and not (name == "max_time_s" and value == math.inf):
                raise InvalidInputError(f"{name} must be a finite number, got {value}")
        for name in ("learning_rate", "lr_new_rows"):  # AdamW's step size lr / (1 - beta1) overflowed at 1e38
            value = getattr(self, name)
            if value is not None and value > MAX_LEARNING_RATE:
                raise InvalidInputError(f"{name} must be at most {MAX_LEARNING_RATE:g} (fine-tuning rates are about "
                                        f"1e-5 to 1e-2), got {value}")
        if self.train not in TRAIN_MODES:
            raise InvalidInputError(f"train must be one of {', '.join(TRAIN_MODES)}; got {self.train!r}")
        if not self.learning_rate > 0:
            raise InvalidInputError(f"learning_rate must be positive, got {self.learning_rate}")
        if self.lr_new_rows is not None and not self.lr_new_rows > 0:
            raise InvalidInputError(f"lr_new_rows must be positive or None (learning_rate), got {self.lr_new_rows}")
        for name in ("lora_r", "lora_alpha"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise InvalidInputError(f"{name} must be a positive integer, got {value!r}")
        if isinstance(self.warmup_steps, bool) or not isinstance(self.warmup_steps, int) or self.warmup_steps < 0:
            raise InvalidInputError(f"warmup_steps must be an integer >= 0, got {self.warmup_steps!r}")
        if not self.weight_decay >= 0:
            raise InvalidInputError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:  # 0 would silently zero every update
            raise InvalidInputError(f"max_grad_norm must be positive or None (off), got {self.max_grad_norm}")
        if self.max_time_s is not None and not self.max_time_s >= 0:  # 0: stop after the first step's checkpoint
            raise InvalidInputError(f"max_time_s must be >= 0 or None (no limit), got {self.max_time_s}")
        if self.checkpoint_every is not None and (isinstance(self.checkpoint_every, bool) or
                                                  not isinstance(self.checkpoint_every, int) or self.checkpoint_every < 1):
            raise InvalidInputError(f"checkpoint_every must be a positive integer or None (at every evaluation), "
                                    f"got {self.checkpoint_every!r}")
        if self.batch_size % self.gradient_accumulation:
            raise InvalidInputError(f"batch_size ({self.batch_size}) must be a multiple of gradient_accumulation "
                             f"({self.gradient_accumulation})")

    @property
    def checkpoint_interval(self) -> int:
        return self.eval_every if self.checkpoint_every is None else self.checkpoint_every

    @property
    def new_rows_rate(self) -> float:
        return self.learning_rate if self.lr_new_rows is None else self.lr_new_rows

    def rates(self) -> dict[str, Any]:
        """Which parameters train at what peak rate (None: frozen), for the reports."""
        lr, new = self.learning_rate, self.new_rows_rate
        return {"full": {"body": lr, "old_rows": lr, "new_rows": new},
                "embeddings": {"body": None, "old_rows": lr, "new_rows": new},
                "new_rows": {"body": None, "old_rows": None, "new_rows": new},
                "lora": {"body": None, "lora_adapters": lr, "old_rows": None, "new_rows": new}}[self.train]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
