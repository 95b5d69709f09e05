"""The held-out sample diagnose scores: every held-out document that holds a new word (up to a share of the
budget) and a seeded random sample of the others, each weighted by the inverse of its known probability of
being drawn, so that weighted figures estimate the whole split's without bias (Horvitz-Thompson).

Left out: scoring the sample (diagnostics.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from transformers import PreTrainedTokenizerBase

from .corpus import Corpus
from .errors import InvalidInputError
from .planning import TokenPlan
from .tokenization import documents_up_to


# Share of max_tokens for held-out documents that hold a new word: up to it, every such document is scored.
OCCURRENCE_SHARE = 0.5
BATCH_DOCUMENTS = 1000


@dataclass
class HeldoutSample:
    """Held-out documents to score, each with weight 1 / P(drawn) (Horvitz-Thompson), so that weighted sums
    estimate sums over the whole held-out split without bias. All weights are 1 when the split fits."""

    docs: list[str]
    weights: Tensor  # [documents] float64
    documents_with_words: int  # in the sample
    heldout_documents_with_words: int  # in the whole split


def weighted_heldout_sample(corpus: Corpus, tokenizer: PreTrainedTokenizerBase, plan: TokenPlan, max_tokens: int,
                            seed: int = 0) -> HeldoutSample:
    """About ``max_tokens`` tokens of held-out text: every document that holds a new word (Poisson-sampled
    down to OCCURRENCE_SHARE of the budget when they hold more), and a seeded Poisson sample of the others
    for the rest. Inclusion probabilities are fixed before drawing, so the weights 1/p are exact."""
    if not corpus.heldout:
        raise InvalidInputError(f"corpus {corpus.name!r} has no held-out documents to diagnose on")
    lengths, holds = _token_counts(corpus.heldout, tokenizer, plan)
    total, with_words = lengths.sum(), (lengths * holds).sum()
    if total <= max_tokens:
        p_words = p_other = 1.0
    else:
        cap = OCCURRENCE_SHARE * max_tokens
        p_words = min(1.0, cap / with_words) if with_words else 1.0
        rest = total - with_words
        p_other = min(1.0, (max_tokens - min(with_words, cap)) / rest) if rest else 1.0
    prob = np.where(holds, p_words, p_other)
    drawn = np.random.default_rng(seed).random(len(prob)) < prob
    chosen = np.flatnonzero(drawn)
    if not len(chosen):
        raise InvalidInputError(f"max_tokens={max_tokens} drew no held-out document; raise max_tokens")
    return HeldoutSample([corpus.heldout[i] for i in chosen.tolist()], torch.tensor(1.0 / prob[chosen]),
                         int(holds[chosen].sum()), int(holds.sum()))


def _token_counts(docs: list[str], tokenizer, plan: TokenPlan) -> tuple[np.ndarray, np.ndarray]:
    """(tokens of each document in the original tokenization, whether its expanded tokenization has a new token)."""
    lengths, holds = [], []
    for start in range(0, len(docs), BATCH_DOCUMENTS):  # batches: never all token ids at once
        batch = docs[start : start + BATCH_DOCUMENTS]
        lengths += [len(ids) for ids in tokenizer(batch, add_special_tokens=False)["input_ids"]]
        holds += [any(t >= plan.tokens_before for t in ids)
                  for ids in plan.tokenizer(batch, add_special_tokens=False)["input_ids"]]
    return np.array(lengths, dtype=np.int64), np.array(holds, dtype=bool)


def heldout_sample(corpus: Corpus, tokenizer: PreTrainedTokenizerBase, max_tokens: int) -> list[str]:
    """The first held-out documents up to about ``max_tokens`` tokens (original tokenizer)."""
    if not corpus.heldout:
        raise InvalidInputError(f"corpus {corpus.name!r} has no held-out documents to diagnose on")
    return documents_up_to(corpus.heldout, tokenizer, max_tokens)
