"""Held-out evaluation during fine-tuning: bits per character, token perplexity, the mean probability on the
new tokens, and adoption (where the text has a new word, the share of occurrences where its new token outranks
the word's old first piece: does the model write it with the new token?), reduced over processes.

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
    """Held-out figures: bits per character, token perplexity, mean probability on the new tokens, adoption
    (nan without first pieces or occurrences)."""

    bits_per_character: float
    token_perplexity: float
    new_token_probability: float
    adoption: float = math.nan


@torch.inference_mode()
def evaluate(model: nn.Module, sequences: list[list[int]], characters: int, start_id: int, first_new: int,
             vocabulary: int, accelerator, first_pieces: list[int] | None = None) -> Evaluation:
    """Score ``sequences`` (each after ``start_id``); this process takes every num_processes-th one.
    first_pieces [k]: the old first piece of each new token's word, for adoption."""
    was_training = model.training
    model.eval()
    mine = sequences[accelerator.process_index :: accelerator.num_processes]
    # nll, tokens, new-token probability, occurrences of new tokens, occurrences where the new token outranks
    totals = torch.zeros(5, dtype=torch.float64, device=accelerator.device)
    first = torch.tensor(first_pieces or [], dtype=torch.long, device=accelerator.device)
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
        totals += torch.stack([-target[valid].double().sum(), valid.sum().double(), new_mass[valid].double().sum(),
                               *_adoption_counts(logits, ids[:, 1:], valid, first_new, first)])
    totals = accelerator.reduce(totals, reduction="sum")
    model.train(was_training)
    nll, tokens, new, occurrences, wins = totals.tolist()
    return Evaluation(nll / math.log(2) / characters, math.exp(nll / tokens), new / tokens,
                      wins / occurrences if occurrences else math.nan)


def _adoption_counts(logits, targets, valid, first_new: int, first: torch.Tensor) -> list[torch.Tensor]:
    """(occurrences of new tokens as targets, how many of them the new token outranks its word's first piece)."""
    at = valid & (targets >= first_new) & (targets < first_new + len(first))
    if not len(first) or not at.any():
        zero = torch.zeros((), dtype=torch.float64, device=logits.device)
        return [zero, zero]
    rows = logits[at]  # [occurrences, vocabulary]
    new_logit = rows.gather(1, targets[at].unsqueeze(1)).squeeze(1)
    piece_logit = rows.gather(1, first[targets[at] - first_new].unsqueeze(1)).squeeze(1)
    return [at.sum().double(), (new_logit > piece_logit).sum().double()]
