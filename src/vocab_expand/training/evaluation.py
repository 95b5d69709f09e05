"""Held-out evaluation during fine-tuning: bits per character, token perplexity, and the mean probability on
the new tokens, reduced over processes.

Left out: when to evaluate (loop.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ..forward import batches


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
