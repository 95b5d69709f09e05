"""One batched forward pass that keeps what every later figure needs, per predicted position.

For each position it keeps the final hidden state h (the input of the output head, captured with a
hook, so it works for any transformers causal LM), log Z and the maximum over the old vocabulary, and the
target's logit when the target is an old token. With these, any set of new output rows can be scored with a
[positions x k] product: the [positions x n] product is never repeated.

Left out: which sequences to run and what the figures are (diagnostics.py, learning/); the head and embedding
arithmetic (heads.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from .errors import InvalidInputError, InvalidTypeError
from .heads import embed_with_rows
from .rows.layout import embedding_layout

# Logits are [batch tokens x vocabulary] floats: 2^26 of them is 256 MB (and a float32 copy of a half-precision
# model's, and logsumexp's temporaries), so big vocabularies get smaller batches.
LOGIT_BUDGET = 2**26
# On a GPU the batches grow to fill it: the logits (and their float32 reductions, about 3 copies) may take this
# share of its free memory, up to LOGIT_BUDGET_MAX logits (about 3 GB with the copies: with distill's kept
# caches, a big model's peak stays within its weights + 8 GB).
GPU_LOGIT_SHARE = 0.25
LOGIT_BUDGET_MAX = 2**28


def logit_budget(device: torch.device) -> int:
    """Logits one batch may hold: LOGIT_BUDGET on the CPU; on a GPU, what GPU_LOGIT_SHARE of its free memory
    holds (three float32 copies), within [LOGIT_BUDGET, LOGIT_BUDGET_MAX]. E.g. 60 GB free: 2^28."""
    if device.type != "cuda":
        return LOGIT_BUDGET
    from .memory import available_bytes

    free = available_bytes(device) or 0
    return int(min(LOGIT_BUDGET_MAX, max(LOGIT_BUDGET, GPU_LOGIT_SHARE * free / 12)))


@dataclass
class PassStats:
    """Per-position arrays of one pass, concatenated over sequences (P positions).

    hidden [P, d]; log_z, max_logit, target_logit [P] (target_logit is nan where the target is a new token);
    target [P] token ids; doc [P] the sequence index; index [P] the position within its sequence.
    """

    hidden: Tensor
    log_z: Tensor
    max_logit: Tensor
    target: Tensor
    target_logit: Tensor
    doc: Tensor
    index: Tensor

    def select(self, mask: Tensor) -> "PassStats":
        return PassStats(*(getattr(self, f)[mask] for f in self.__dataclass_fields__))

    @staticmethod
    def concat(parts: list["PassStats"]) -> "PassStats":
        return PassStats(*(torch.cat([getattr(p, f) for p in parts]) for f in PassStats.__dataclass_fields__))


def batches(lengths: list[int], max_tokens: int) -> list[list[int]]:
    """Sequence indices grouped so that (longest length x count) stays within max_tokens; sorted by length."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    groups, current = [], []
    for i in order:
        if current and lengths[i] * (len(current) + 1) > max_tokens:
            groups.append(current)
            current = []
        current.append(i)
    if current:
        groups.append(current)
    return groups


@torch.inference_mode()
def run_pass(
    model: nn.Module,
    sequences: list[list[int]],
    tokens_before: int,
    start_id: int | None,
    *,
    progress: bool = False,
    desc: str = "forward",
    input_rows: Tensor | None = None,
) -> PassStats:
    """Score every token of every sequence (each prefixed with ``start_id``) and keep per-position stats.

    With ``start_id=None`` the sequences are taken as they are: the first token is context only.
    ``input_rows`` [k, d]: input rows of ids tokens_before.. for a model that does not have them (fit, distill).
    """
    if start_id is None:
        firsts = {s[0] for s in sequences if s}
        if len(firsts) > 1 or not all(len(s) > 1 for s in sequences):
            return PassStats.concat([run_pass(model, [s[1:]], tokens_before, s[0], desc=desc, input_rows=input_rows)
                                     for s in sequences if len(s) > 1])
        start_id = firsts.pop()
        sequences = [s[1:] for s in sequences]
    layout = embedding_layout(model)
    if layout.output is None:
        raise InvalidTypeError("the model has no output head to diagnose")
    max_tokens = max(256, logit_budget(layout.output.weight.device) // layout.output.weight.shape[0])
    captured: list[Tensor] = []
    hook = layout.output.register_forward_hook(lambda mod, args, out: captured.append(args[0]))
    parts: list[PassStats] = []
    lengths = [len(s) for s in sequences]
    try:
        groups = batches(lengths, max_tokens)
        for group in tqdm(groups, desc=desc, unit="batch", disable=not progress, mininterval=1.0):
            parts.append(_score_batch(model, sequences, group, tokens_before, start_id, captured, input_rows))
    finally:
        hook.remove()
    if not parts:
        raise InvalidInputError("nothing to score: every sequence is empty")
    return PassStats.concat(parts)


def _score_batch(model, sequences, group, tokens_before, start_id, captured, input_rows=None) -> PassStats:
    """One batch on the device of the model's input embedding (Accelerate's hooks move it on from there); the
    kept statistics come back to the CPU in float32, reduced from the logits in float32 whatever the model's
    dtype (a bf16 log Z is off by up to 0.07 nats)."""
    device = model.get_input_embeddings().weight.device
    rows = [torch.tensor([start_id, *sequences[i]], dtype=torch.long) for i in group]
    lengths = torch.tensor([len(r) for r in rows])
    ids = nn.utils.rnn.pad_sequence(rows, batch_first=True, padding_value=start_id)  # [B, width + 1]
    width = ids.shape[1] - 1
    mask = (torch.arange(width + 1).unsqueeze(0) < lengths.unsqueeze(1)).long()
    captured.clear()
    inputs, attention = ids[:, :-1].to(device), mask[:, :-1].to(device)
    if input_rows is None:
        logits = model(input_ids=inputs, attention_mask=attention).logits
    else:
        embeds = embed_with_rows(model, inputs, input_rows, tokens_before)
        logits = model(inputs_embeds=embeds, attention_mask=attention).logits
    valid = mask[:, 1:].bool()
    target = ids[:, 1:]
    on_device = valid.to(logits.device)
    old = logits[..., :tokens_before]  # a view: a float32 model's reductions never copy the [tokens x vocabulary] logits
    if old.dtype != torch.float32:  # half precision: reduce in float32 (a bf16 log Z is off by up to 0.07 nats)
        old = old.float()
    is_old = target[valid] < tokens_before
    clamped = target.clamp_max(tokens_before - 1).to(old.device).unsqueeze(2)
    target_logit = old.gather(2, clamped).squeeze(2)[on_device].cpu()
    return PassStats(
        hidden=captured[-1][valid.to(captured[-1].device)].to(torch.float32).cpu(),
        log_z=torch.logsumexp(old, dim=-1)[on_device].cpu(),
        max_logit=old.max(dim=-1).values[on_device].cpu(),
        target=target[valid],
        target_logit=torch.where(is_old, target_logit, torch.full_like(target_logit, math.nan)),
        doc=torch.tensor(group).unsqueeze(1).expand_as(valid)[valid],
        index=torch.arange(width).unsqueeze(0).expand_as(valid)[valid],
    )
