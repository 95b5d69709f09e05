"""A weighted sample of the training text for the data-driven strategies (fit, distill).

Forward passes are the cost of fitting, so only a capped number of positions is cached. A uniform sample
would see a rare word once or not at all, so chunks are drawn with inclusion probability
pi = max(base rate, m / count of its rarest new word) and weighted by 1/pi (Horvitz-Thompson): every word
is expected about m times, and the weighted loss is still an unbiased estimate of the loss on the whole
training split. Chunks without new words are drawn at a base rate of their own, since they only tell the
new rows where not to take probability. A seeded share of the chunks is the calibration slice.

Two streaming passes: the first tokenizes every training document and keeps only chunk lengths and which
new tokens each chunk holds; the second re-tokenizes the chosen documents. No corpus-sized id list is held.

Left out: what is done with the sample (fitting.py, distill.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

# Documents are cut into chunks of at most this many tokens (each scored after the start token).
CHUNK_TOKENS = 256
# Share of the position budget spent on chunks that contain new words.
NEW_WORD_SHARE = 0.75
BATCH_DOCUMENTS = 512


@dataclass
class DomainSample:
    """Chunks of the expanded tokenization of the training split.

    ids: the chunks (C lists of token ids); weight [C]: 1 / inclusion probability; calibration [C] bool;
    counts [k]: occurrences of each new token in the whole training split; n_old: first new id.
    """

    ids: list[list[int]]
    weight: Tensor
    calibration: Tensor
    counts: Tensor
    n_old: int
    scanned_tokens: int

    def occurrences(self, calibration: bool = False) -> Tensor:
        """[k] occurrences of each new token in the fitting (or calibration) part of the sample."""
        k = self.counts.numel()
        found = torch.zeros(k, dtype=torch.long)
        for chunk, is_cal in zip(self.ids, self.calibration.tolist()):
            if is_cal == calibration:
                new = [t - self.n_old for t in chunk if t >= self.n_old]
                found += torch.bincount(torch.tensor(new, dtype=torch.long), minlength=k)
        return found

    def positions(self) -> int:
        return sum(map(len, self.ids))


def chunks_of(ids: list[int]) -> list[list[int]]:
    return [ids[i : i + CHUNK_TOKENS] for i in range(0, len(ids), CHUNK_TOKENS)] or [[]]


def sample_domain(
    tokenizer: PreTrainedTokenizerBase,
    documents: Sequence[str],
    n_old: int,
    k: int,
    *,
    max_positions: int,
    min_sampled_occurrences: int,
    calibration_fraction: float,
    seed: int,
    progress: bool = True,
) -> DomainSample:
    """Sample chunks of ``documents`` (tokenized by the expanded ``tokenizer``) for fitting ``k`` new tokens."""
    if not documents:
        raise ValueError("fit and distill need domain text: the corpus has no training documents")
    lengths, doc_of, holds, counts = _scan(tokenizer, documents, n_old, k, progress)
    if counts.sum() == 0:
        raise ValueError("none of the new words occurs in the training text, so there is nothing to fit them to; "
                         "use a corpus that contains them, or mean/subword rows, which need no text")
    wanted = min_sampled_occurrences / (1.0 - calibration_fraction)
    pi = inclusion_probabilities(lengths, holds, counts, wanted, max_positions)
    rng = np.random.default_rng(seed)
    chosen = np.flatnonzero((rng.random(len(pi)) < pi) & (lengths > 0))
    is_cal = rng.random(len(chosen)) < calibration_fraction
    ids = _chunks(tokenizer, documents, doc_of, chosen)
    return DomainSample(ids=ids, weight=torch.tensor(1.0 / pi[chosen], dtype=torch.float32),
                        calibration=torch.tensor(is_cal), counts=torch.tensor(counts), n_old=n_old,
                        scanned_tokens=int(lengths.sum()))


def _scan(tokenizer, documents, n_old, k, progress):
    """Chunk lengths [C], owning document [C], the rarest-word key per chunk [C] (-1: none), word counts [k]."""
    lengths, doc_of, holds = [], [], []
    counts = np.zeros(k, dtype=np.int64)
    bar = tqdm(total=len(documents), desc="scanning domain text", unit="doc", disable=not progress, mininterval=1.0)
    for start in range(0, len(documents), BATCH_DOCUMENTS):
        batch = tokenizer(list(documents[start : start + BATCH_DOCUMENTS]), add_special_tokens=False)["input_ids"]
        for offset, ids in enumerate(batch):
            for chunk in chunks_of(ids):
                new = np.array([t - n_old for t in chunk if t >= n_old], dtype=np.int64)
                counts += np.bincount(new, minlength=k)
                lengths.append(len(chunk))
                doc_of.append(start + offset)
                holds.append(np.unique(new))
        bar.update(len(batch))
    bar.close()
    return np.array(lengths, dtype=np.float64), np.array(doc_of), holds, counts


def inclusion_probabilities(lengths: np.ndarray, holds: list[np.ndarray], counts: np.ndarray, wanted: float,
                            max_positions: int) -> np.ndarray:
    """pi [C]: chunks with new words get max(rate, wanted / count of their rarest word), scaled to fit
    NEW_WORD_SHARE of the budget; the other chunks share what is left at one rate."""
    has_new = np.array([h.size > 0 for h in holds])
    need = np.zeros(len(lengths))
    need[has_new] = [min(1.0, wanted / counts[h].min()) for h in holds if h.size]
    budget = NEW_WORD_SHARE * max_positions

    def spent(rate: float, scale: float) -> float:
        return float((lengths * np.minimum(1.0, np.maximum(rate, scale * need)))[has_new].sum())

    scale, rate = 1.0, 0.0
    if spent(0.0, 1.0) > budget:  # even the rare-word quota does not fit: shrink it
        scale = _bisect(lambda s: spent(0.0, s) - budget)
    elif spent(1.0, 1.0) > budget:
        rate = _bisect(lambda r: spent(r, 1.0) - budget)
    else:
        rate = 1.0
    pi = np.where(has_new, np.minimum(1.0, np.maximum(rate, scale * need)), 0.0)
    rest = lengths[~has_new].sum()
    if rest:
        pi[~has_new] = min(1.0, max(0.0, max_positions - spent(rate, scale)) / rest)
    return np.maximum(pi, 0.0)


def _bisect(excess, low: float = 0.0, high: float = 1.0, steps: int = 50) -> float:
    """The largest x in [low, high] with excess(x) <= 0, for an increasing excess."""
    for _ in range(steps):
        mid = (low + high) / 2
        low, high = (mid, high) if excess(mid) <= 0 else (low, mid)
    return low


def _chunks(tokenizer, documents, doc_of: np.ndarray, chosen: np.ndarray) -> list[list[int]]:
    """The chosen chunks' ids, re-tokenizing only the documents they come from."""
    docs = sorted(set(doc_of[chosen].tolist()))
    tokenized = dict(zip(docs, tokenizer([documents[d] for d in docs], add_special_tokens=False)["input_ids"]))
    first_chunk = {}
    for c, d in enumerate(doc_of.tolist()):
        first_chunk.setdefault(d, c)
    return [chunks_of(tokenized[doc_of[c]])[c - first_chunk[doc_of[c]]] for c in chosen.tolist()]
