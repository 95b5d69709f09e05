"""How much adding tokens changes a model's next-token distribution: closed forms on logits.

For a prefix whose hidden state does not depend on the new rows, the old logits stay the same and k
new logits l_new join them. With Z = sum(exp(old logits)):
    KL(p_old || p_new) = log(1 + sum(exp(l_new)) / Z) = logsumexp([log Z, l_new]) - log Z
    moved probability  = sum(exp(l_new)) / (Z + sum(exp(l_new)))
Both need only log Z and the k new logits, never a second softmax over the whole vocabulary.

Pure tensor maths.

Left out: getting hidden states (forward.py, diagnostics.py).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def log_partition(logits: Tensor) -> Tensor:
    """log Z over the last dimension, in float32: [..., n] -> [...]."""
    return torch.logsumexp(logits.to(torch.float32), dim=-1)


def added_token_kl(log_z: Tensor, new_logits: Tensor) -> Tensor:
    """KL(p_old || p_new) in nats per prefix: log Z [...] and new logits [..., k] -> [...].

    Computed as softplus(logsumexp(new) - log Z) in float64: the difference form logaddexp(log Z, .) - log Z
    cancels catastrophically when log Z is large in magnitude (a twin's log Z is about -300).
    """
    new_mass = torch.logsumexp(new_logits.to(torch.float64), dim=-1)
    return torch.nn.functional.softplus(new_mass - log_z.to(torch.float64))


def moved_probability(log_z: Tensor, new_logits: Tensor) -> Tensor:
    """Probability the expanded model puts on the new tokens, per prefix: [...]."""
    new_mass = torch.logsumexp(new_logits.to(torch.float64), dim=-1)
    return torch.sigmoid(new_mass - log_z.to(torch.float64))


def predicted_kl_zero_rows(log_z: Tensor, k: int) -> Tensor:
    """KL that k all-zero output rows would cost (logit 0 each): log(1 + k exp(-log Z)) per prefix."""
    return torch.nn.functional.softplus(math.log(k) - log_z.to(torch.float64))


def full_softmax_kl(old_logits: Tensor, new_logits_all: Tensor) -> Tensor:
    """Brute-force KL(p_old || p_new) restricted to the old vocabulary: for checking the closed form.

    old_logits [..., n]; new_logits_all [..., n + k] (old logits first). p_new's old entries are renormalized
    over all n + k, so KL = sum_i p_old,i (log p_old,i - log p_new,i) over the n old tokens.
    """
    n = old_logits.shape[-1]
    log_p_old = torch.log_softmax(old_logits.double(), dim=-1)
    log_p_new = torch.log_softmax(new_logits_all.double(), dim=-1)[..., :n]
    return (log_p_old.exp() * (log_p_old - log_p_new)).sum(-1)


def hewitt_bound(k: int, n: int) -> float:
    """log(1 + k/n): the most KL(old || new) that k mean-initialized output rows can cost, over n tokens."""
    return math.log1p(k / n) if n else float("inf")


def adoption(new_logit: Tensor, first_piece_logit: Tensor, word: Tensor, k: int) -> tuple[float, Tensor]:
    """How often the model would write a new word with its new token: at each occurrence (where the text has
    the word), whether the new token's logit is above the logit of the word's old first piece.

    new_logit, first_piece_logit [P] and word [P] (0..k-1) at the P occurrences -> (overall share, share per
    word [k], nan for a word with no occurrence). E.g. logits (2, 0), (1, 3), words (0, 0) -> 0.5, [0.5].
    """
    wins = (new_logit > first_piece_logit).to(torch.float64)
    counts = torch.bincount(word, minlength=k).to(torch.float64)
    per_word = torch.bincount(word, weights=wins, minlength=k) / counts
    return (wins.mean().item() if wins.numel() else math.nan), per_word
