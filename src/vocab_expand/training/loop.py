"""The fine-tuning loop of one expanded model through Hugging Face Accelerate, resumably.

The same code runs in one process or under `accelerate launch` (several CPU processes with gloo here, GPUs,
FSDP or DeepSpeed configs elsewhere). Optimizer step s reads rows [s * batch_size, (s + 1) * batch_size) of the
data order, split over processes and accumulation micro-steps, so `batch_size` is the global batch.

Left out: the options (config.py), the data (data.py), evaluation (evaluation.py), checkpoints
(checkpoints.py); expansion and the comparison across strategies (experiments.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..errors import InvalidInputError, NotFiniteError
from .checkpoints import SCHEDULER_FILE, RunFolder
from .config import TrainConfig
from .data import TrainingData, data_order
from .evaluation import evaluate
from .faults import crash_after_step
from .optim import prepare


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
    if any(p.dtype == torch.float16 for p in model.parameters()):
        # AdamW's epsilon (1e-8) is 0 in float16, so an update where the second moment is 0 is inf: a float16
        # model's weights were nan after 2 steps. It trains in float32 (the report's evaluations with it).
        model.float()
    trainable = prepare(model, config, data.first_new, data.vocabulary)
    model, optimizer = trainable.model, trainable.optimizer
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
                                trainable.update)
        step += 1
        bar.update(1)
        if not math.isfinite(facts["train_loss"]) and not _weights_finite(model):  # diverged, not a transient
            bar.close()  # half-precision overflow (whose update was skipped): stop before it is logged as "finished"
            raise NotFiniteError(f"{desc}: the training loss is {facts['train_loss']} at step {step}, so training "
                                 "stopped; lower the learning rate (--lr, --lr-new-rows) and run again")
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
        crash_after_step(step)
    bar.close()
    if config.train == "lora":  # the adapters and new-row deltas go into the weights: a plain model again
        accelerator.unwrap_model(model).merge_and_unload()
    return "finished"


def _optimizer_step(model, optimizer, scheduler, rows: Tensor, indices: Tensor, config: TrainConfig,
                    accelerator, update) -> dict[str, Any]:
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
        update(scheduler.get_last_lr()[0])  # optimizer.step(), with the new rows at their own rate
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return {"train_loss": accelerator.reduce(total, reduction="mean").item(), "grad_norm": norm, **({"skipped": True} if skipped else {})}


def _weights_finite(model: nn.Module) -> bool:
    """Whether every trainable weight is finite (a run whose loss is inf or nan with finite weights skipped
    that update and goes on; one whose weights are not finite has diverged for good)."""
    return all(bool(torch.isfinite(p).all()) for p in model.parameters() if p.requires_grad)


def _flag(accelerator, value: bool) -> bool:
    """True on every process when it is true on any (processes must stop together)."""
    return accelerator.reduce(torch.tensor(float(value), device=accelerator.device), reduction="sum").item() > 0


def _log_eval(model, data: TrainingData, step: int, folder: RunFolder, accelerator) -> None:
    found = evaluate(accelerator.unwrap_model(model), data.heldout, data.characters, data.start_id,
                     data.first_new, data.vocabulary, accelerator, data.first_pieces)
    if accelerator.is_main_process:
        folder.append({"step": step, **dataclasses.asdict(found)})
