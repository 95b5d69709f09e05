"""Fine-tuning one expanded model through Hugging Face Accelerate, resumably, with held-out evaluations.

The same code runs in one process or under `accelerate launch` (several CPU processes with gloo here,
GPUs, FSDP or DeepSpeed configs elsewhere). The data order depends only on the seed and the step: the
packed training sequences are permuted once, and optimizer step s reads sequences
[s * batch_size, (s + 1) * batch_size) of that order, split over processes and accumulation micro-steps.
So `batch_size` is the global batch, and a resumed run reads exactly what an uninterrupted one would.

Checkpoints (Accelerate's save_state: weights, optimizer, scheduler, RNG) are written atomically every
checkpoint_every steps and when max_time_s runs out; metrics.jsonl is cut back to the checkpoint on resume.

Left out: expansion and the comparison across strategies (experiments.py), plots (report.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from .forward import batches
from .io import write_json
from .errors import InvalidInputError

TrainMode = Literal["full", "embeddings", "new_rows"]
SCHEDULER_FILE = "vocab_expand_scheduler.pt"


@dataclass(frozen=True)
class TrainConfig:
    """Options of the fine-tuning runs :func:`vocab_expand.compare` makes (identical for every strategy)."""

    # The blog post's figure separates within a few hundred steps; 200 with an evaluation every 20 shows it.
    steps: int = 200
    eval_every: int = 20
    # Full fine-tuning, as in the blog; "embeddings" trains both embedding matrices, "new_rows" only new rows.
    train: TrainMode = "full"
    # A small model's usual fine-tuning rate; warm-up then linear decay to 0 at `steps`.
    learning_rate: float = 5e-5
    warmup_steps: int = 10
    weight_decay: float = 0.0
    # Gradient-norm clipping, as transformers' Trainer does by default; None turns it off. Without it, zero
    # rows on a negative-logit model (initial loss ~250 nats) diverged to NaN within 30 steps here.
    max_grad_norm: float | None = 1.0
    # Global batch in sequences per optimizer step (split over processes and accumulation micro-steps).
    batch_size: int = 8
    gradient_accumulation: int = 1
    # Packed sequences of this many tokens (documents joined with EOS).
    seq_len: int = 128
    # bf16 autocast where the hardware supports it; float32 otherwise.
    bf16: bool = False
    # Held-out text scored at each evaluation (tokens of the original tokenizer).
    eval_tokens: int = 4000
    # None: checkpoint at every evaluation.
    checkpoint_every: int | None = None
    # Stop (after a checkpoint) once this many seconds have passed; the next run resumes.
    max_time_s: float | None = None
    # Keep the final model of every strategy (RUNS/<strategy>/final/).
    save_final: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("steps", "eval_every", "batch_size", "gradient_accumulation", "seq_len", "eval_tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidInputError(f"{name} must be a positive integer, got {value!r}")
        if self.train not in ("full", "embeddings", "new_rows"):
            raise InvalidInputError(f"train must be full, embeddings or new_rows; got {self.train!r}")
        if not self.learning_rate > 0:
            raise InvalidInputError(f"learning_rate must be positive, got {self.learning_rate}")
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

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def pack(sequences: list[list[int]], seq_len: int, separator: int) -> Tensor:
    """Documents joined with ``separator`` and cut into rows of ``seq_len`` tokens: [N, seq_len] (the tail dropped)."""
    flat = [t for s in sequences for t in (*s, separator)]
    n = len(flat) // seq_len
    return torch.tensor(flat[: n * seq_len], dtype=torch.long).view(n, seq_len)


def data_order(rows: int, config: TrainConfig) -> Tensor:
    """The sequence indices of every step: [steps, batch_size]; a clear error when the text is too short."""
    needed = config.steps * config.batch_size
    if rows < needed:
        raise InvalidInputError(
            f"the training text packs into {rows} sequences of {config.seq_len} tokens, but {config.steps} steps of "
            f"{config.batch_size} need {needed}: use fewer steps, a smaller batch_size or seq_len, or more text")
    order = torch.randperm(rows, generator=torch.Generator().manual_seed(config.seed))
    return order[:needed].view(config.steps, config.batch_size)


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


@dataclass
class Evaluation:
    """Held-out figures: bits per character, token perplexity, mean probability on the new tokens."""

    bits_per_character: float
    token_perplexity: float
    new_token_probability: float


@torch.inference_mode()
def evaluate(model: nn.Module, sequences: list[list[int]], characters: int, start_id: int, first_new: int,
             vocabulary: int, accelerator) -> Evaluation:
    """Score ``sequences`` (each after ``start_id``); this process takes every num_processes-th one."""
    was_training = model.training
    model.eval()
    mine = sequences[accelerator.process_index :: accelerator.num_processes]
    totals = torch.zeros(3, dtype=torch.float64, device=accelerator.device)  # nll, tokens, new-token probability
    for group in batches([len(s) for s in mine], 2048):
        width = max(len(mine[i]) for i in group)
        ids = torch.full((len(group), width + 1), start_id, dtype=torch.long)
        mask = torch.zeros_like(ids, dtype=torch.bool)
        for r, i in enumerate(group):
            ids[r, 1 : len(mine[i]) + 1] = torch.tensor(mine[i])
            mask[r, : len(mine[i]) + 1] = True
        ids, mask = ids.to(accelerator.device), mask.to(accelerator.device)
        logits = model(input_ids=ids[:, :-1], attention_mask=mask[:, :-1].long()).logits[..., :vocabulary].float()
        log_p = torch.log_softmax(logits, dim=-1)
        valid = mask[:, 1:]
        target = log_p.gather(2, ids[:, 1:].unsqueeze(2)).squeeze(2)
        new_mass = torch.logsumexp(log_p[..., first_new:], dim=-1).exp() if vocabulary > first_new else torch.zeros_like(target)
        totals += torch.stack([-target[valid].double().sum(), valid.sum().double(), new_mass[valid].double().sum()])
    totals = accelerator.reduce(totals, reduction="sum")
    model.train(was_training)
    nll, tokens, new = totals.tolist()
    return Evaluation(nll / math.log(2) / characters, math.exp(nll / tokens), new / tokens)


class RunFolder:
    """One strategy's folder: config.json, metrics.jsonl, checkpoint/ (atomic), state.json, final/."""

    def __init__(self, path: Path):
        self.path = path
        self.metrics = path / "metrics.jsonl"
        self.checkpoint = path / "checkpoint"
        self.state = path / "state.json"

    def step(self) -> int:
        """The step of the last checkpoint (0 when none)."""
        return json.loads(self.state.read_text())["step"] if self.state.is_file() else 0

    def finished(self) -> bool:
        return self.state.is_file() and json.loads(self.state.read_text()).get("finished", False)

    def records(self) -> list[dict[str, Any]]:
        if not self.metrics.is_file():
            return []
        return [json.loads(line) for line in self.metrics.read_text(encoding="utf-8").splitlines() if line.strip()]

    def cut_to(self, step: int) -> None:
        """Drop records after ``step``: they were made after the checkpoint and will be made again."""
        kept = [r for r in self.records() if r["step"] <= step]
        _write_lines(self.metrics, kept)

    def append(self, record: dict[str, Any]) -> None:
        with self.metrics.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")

    def save(self, accelerator, scheduler, step: int, finished: bool) -> None:
        """Checkpoint atomically: save into checkpoint.tmp, then swap it in and record the step."""
        tmp = self.path / "checkpoint.tmp"
        if accelerator.is_main_process and tmp.exists():
            shutil.rmtree(tmp)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(tmp))
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            torch.save(scheduler.state_dict(), tmp / SCHEDULER_FILE)
            old = self.path / "checkpoint.old"
            if self.checkpoint.exists():
                os.replace(self.checkpoint, old)
            os.replace(tmp, self.checkpoint)
            write_json(self.state, {"step": step, "finished": finished})
            if old.exists():
                shutil.rmtree(old)
        accelerator.wait_for_everyone()


def _write_lines(path: Path, records: list[dict[str, Any]]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    os.replace(tmp, path)


@dataclass
class TrainingData:
    """Packed training rows [N, seq_len], held-out sequences with their characters, the ids that matter."""

    rows: Tensor
    heldout: list[list[int]]
    characters: int
    start_id: int
    first_new: int
    vocabulary: int


def train_run(model: nn.Module, data: TrainingData, config: TrainConfig, folder: RunFolder, accelerator,
              *, progress: bool = True, desc: str = "fine-tuning") -> str:
    """Fine-tune ``model`` (resuming from ``folder``'s checkpoint), evaluating every eval_every steps.
    Returns "finished" or "stopped (max_time_s)"."""
    began = time.perf_counter()
    split = accelerator.num_processes * config.gradient_accumulation
    if config.batch_size % split:
        raise InvalidInputError(f"batch_size ({config.batch_size}) must be a multiple of processes x gradient_accumulation "
                         f"({accelerator.num_processes} x {config.gradient_accumulation})")
    order = data_order(data.rows.shape[0], config)
    params = set_trainable(model, config.train, data.first_new)
    # new_rows: AdamW's decoupled decay would shrink the frozen old rows too (it does not look at gradients), so
    # the embedding matrices get no decay there and _decay_new_rows applies it to the new rows only.
    embeddings = _embedding_weights(model) if config.train == "new_rows" else []
    groups = [{"params": [p for p in params if all(p is not e for e in embeddings)]},
              {"params": embeddings, "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=config.learning_rate,
                                  weight_decay=config.weight_decay)
    schedule = lambda s: min(1.0, (s + 1) / max(1, config.warmup_steps)) * max(0.0, 1 - s / config.steps)  # noqa: E731
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    # The scheduler is not prepared: Accelerate would step it once per process, but batch_size is global here.
    # Its state is checkpointed by RunFolder.save beside Accelerate's.
    model, optimizer = accelerator.prepare(model, optimizer)
    step = folder.step()
    if step:
        accelerator.load_state(str(folder.checkpoint))
        scheduler.load_state_dict(torch.load(folder.checkpoint / SCHEDULER_FILE, weights_only=True))
    if accelerator.is_main_process:
        # From scratch (step 0), every record goes: a run killed before its first checkpoint already logged the
        # step-0 evaluation, which is made again below.
        folder.cut_to(step if step else -1)
    if step == 0:
        _log_eval(model, data, 0, folder, accelerator)
    bar = tqdm(total=config.steps, initial=step, desc=desc, disable=not (progress and accelerator.is_main_process))
    while step < config.steps:
        facts = _optimizer_step(model, optimizer, scheduler, data.rows, order[step], config, accelerator,
                                lambda lr: _decay_new_rows(embeddings, data.first_new, lr, config.weight_decay))
        step += 1
        bar.update(1)
        if accelerator.is_main_process:
            folder.append({"step": step, **facts, "lr": scheduler.get_last_lr()[0]})
        if step % config.eval_every == 0 or step == config.steps:
            _log_eval(model, data, step, folder, accelerator)
        out_of_time = _flag(accelerator, config.max_time_s is not None and time.perf_counter() - began > config.max_time_s)
        if step % config.checkpoint_interval == 0 or step == config.steps or out_of_time:
            folder.save(accelerator, scheduler, step, finished=step == config.steps)
            if out_of_time and step < config.steps:
                bar.close()
                return "stopped (max_time_s)"
        _crash_for_tests(step)
    bar.close()
    return "finished"


def _embedding_weights(model: nn.Module) -> list[nn.Parameter]:
    """The distinct embedding matrices (one when tied)."""
    found = [model.get_input_embeddings().weight, model.get_output_embeddings().weight]
    return list({id(p): p for p in found}.values())


@torch.no_grad()
def _decay_new_rows(embeddings: list[nn.Parameter], first_new: int, lr: float, weight_decay: float) -> None:
    """AdamW's decoupled weight decay, p <- p (1 - lr wd), on rows first_new: only (new_rows training)."""
    for p in embeddings:
        p[first_new:].mul_(1 - lr * weight_decay)


def _optimizer_step(model, optimizer, scheduler, rows: Tensor, indices: Tensor, config: TrainConfig,
                    accelerator, before_update=lambda lr: None) -> dict[str, Any]:
    """One optimizer step over the global batch ``indices``: this process's share, in accumulation micro-steps.
    Returns the loss, the gradient norm before clipping, and skipped=True when that norm was not finite."""
    share = indices.view(accelerator.num_processes, -1)[accelerator.process_index]
    micro = share.view(config.gradient_accumulation, -1)
    total = torch.zeros((), dtype=torch.float64, device=accelerator.device)
    model.train()
    for i, batch_ids in enumerate(micro):
        ids = rows[batch_ids].to(accelerator.device)
        sync = i == len(micro) - 1
        with (accelerator.no_sync(model) if not sync else contextlib.nullcontext()), accelerator.autocast():
            loss = model(input_ids=ids, labels=ids).loss / len(micro)
            accelerator.backward(loss)
        total += loss.detach().double()
    # The norm of the synchronized gradients (clipped to max_grad_norm when set): the same on every process.
    norm = float(accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm or math.inf))
    skipped = not math.isfinite(norm)
    if not skipped:  # an inf or nan gradient would turn every weight it reaches into nan: skip the update
        before_update(scheduler.get_last_lr()[0])
        optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return {"train_loss": accelerator.reduce(total, reduction="mean").item(), "grad_norm": norm, **({"skipped": True} if skipped else {})}


def _flag(accelerator, value: bool) -> bool:
    """True on every process when it is true on any (processes must stop together)."""
    return accelerator.reduce(torch.tensor(float(value), device=accelerator.device), reduction="sum").item() > 0


def _log_eval(model, data: TrainingData, step: int, folder: RunFolder, accelerator) -> None:
    found = evaluate(accelerator.unwrap_model(model), data.heldout, data.characters, data.start_id,
                     data.first_new, data.vocabulary, accelerator)
    if accelerator.is_main_process:
        folder.append({"step": step, **dataclasses.asdict(found)})


def _crash_for_tests(step: int) -> None:
    """VOCAB_EXPAND_CRASH_AFTER_STEP=N kills the process right after step N, as kill -9 would: the resume
    test uses it, so that the kill lands at a known step (between checkpoints, too)."""
    if os.environ.get("VOCAB_EXPAND_CRASH_AFTER_STEP") == str(step):
        os._exit(137)
