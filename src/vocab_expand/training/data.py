"""The training data of a run: documents packed into fixed-length rows, the order every step reads them in
(a function of the seed and the step only, so a resumed run reads what an uninterrupted one would), and the
held-out sequences.

Left out: tokenizing the corpus (experiments.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..errors import InvalidInputError
from .config import TrainConfig


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


@dataclass
class TrainingData:
    """Packed training rows [N, seq_len], held-out sequences with their characters, the ids that matter."""

    rows: Tensor
    heldout: list[list[int]]
    characters: int
    start_id: int
    first_new: int
    vocabulary: int
    # The old first piece of each new token's word (adoption: does the new token outrank it?).
    first_pieces: list[int] = field(default_factory=list)
