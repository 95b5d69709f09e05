"""A weighted sample of the training text for the data-driven strategies (fit, distill).

Forward passes are the cost of fitting, so only a capped number of positions is run through the model. The
fit learns a word's row from the positions where the word is the next token, so those are what the sample
must hold for every word, rare ones included; the other positions only tell the new rows where not to take
probability, and any random share of them does.

The design (Poisson sampling of anchors, Horvitz-Thompson weights):
- every occurrence of new word j is an anchor, drawn with probability pi_j = min(1, max(a, s * wanted / c_j))
  (c_j its count in the training split): each word is expected about ``wanted`` times, frequent words more;
- a chunk is cut after its last drawn anchor: the positions before it are computed anyway (they are the
  anchor's context), so they are kept too;
- besides, whole chunks are drawn at a rate r, so positions far from any new word are represented;
- position t of a chunk is then kept with probability P_t = 1 - (1 - r) prod_{anchors o at or after t} (1 - pi_o),
  known exactly, and weighted 1/P_t: every weighted sum over the sample is an unbiased estimate of the same
  sum over the whole training split, per word as well as in total;
- the weights are then post-stratified: rescaled so that each word's occurrences, and the positions with an
  old target, add up exactly to their known counts (in each part).
a and s are set so that anchors spend NEW_WORD_SHARE of the budget in expectation, r so that the rest is spent.
A seeded share of the chunks (drawn before anything else) is the calibration slice.

The budget, ``max_positions`` (positions run through the model and cached), defaults to what ``wanted``
anchors per word cost, between AUTO_MIN_POSITIONS and AUTO_MAX_POSITIONS: so 1,000 words get a larger sample
than 100.

Two streaming passes: the first tokenizes every training document and keeps only chunk lengths and where the
new tokens are; the second re-tokenizes the chosen documents. No corpus-sized id list is held.

Left out: what is done with the sample (the data-driven strategies, strategies/fit/ and strategies/distill/).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from ..errors import InvalidInputError

# Documents are cut into chunks of at most this many tokens (each scored after the start token).
CHUNK_TOKENS = 256
# Share of the position budget spent (in expectation) on anchors and their contexts.
NEW_WORD_SHARE = 0.75
AUTO_MIN_POSITIONS = 24_576
AUTO_MAX_POSITIONS = 131_072
# The cached states (float32 [P, d], kept on the CPU) may take this share of the available memory; the default
# budget shrinks to fit it (an explicit max_positions is taken as given), never below MIN_STATES_POSITIONS.
STATES_SHARE = 0.25
MIN_STATES_POSITIONS = 4_096
BATCH_DOCUMENTS = 512
# pi = 1 is held as this, so that log(1 - pi) stays finite.
ALMOST_ONE = 1.0 - 1e-12


@dataclass
class DomainSample:
    """Chunks of the expanded tokenization of the training split.

    ids: the chunks (C lists of token ids), each cut after its last kept position plus a short tail;
    weights: C tensors [len(chunk)], the weight 1/P_t of each position's loss (0: context or tail only);
    calibration [C] bool; counts [k]: occurrences of each new token in the whole training split;
    tokens_before: first new id; budget: the position budget it was drawn for.
    """

    ids: list[list[int]]
    weights: list[Tensor]
    calibration: Tensor
    counts: Tensor
    tokens_before: int
    scanned_tokens: int
    budget: int

    def occurrences(self, calibration: bool = False) -> Tensor:
        """[k] kept (weighted) occurrences of each new token in the fitting (or calibration) part."""
        k = self.counts.numel()
        found = torch.zeros(k, dtype=torch.long)
        for chunk, weight, is_cal in zip(self.ids, self.weights, self.calibration.tolist()):
            if is_cal == calibration:
                ids = torch.tensor(chunk, dtype=torch.long)
                new = ids[(ids >= self.tokens_before) & (weight > 0)] - self.tokens_before
                found += torch.bincount(new, minlength=k)
        return found

    def positions(self) -> int:
        """Positions run through the model."""
        return sum(map(len, self.ids))

    def scored(self) -> list[list[int]]:
        """The chunks without their unweighted tails: what the fit runs."""
        return [chunk[: int(torch.nonzero(w).max()) + 1] for chunk, w in zip(self.ids, self.weights)]

    def flat_weights(self) -> tuple[Tensor, Tensor]:
        """(weight of every position [P], offset of each chunk's first position [C]), chunks concatenated."""
        lengths = torch.tensor([len(c) for c in self.ids], dtype=torch.long)
        offsets = torch.cumsum(lengths, 0) - lengths
        return torch.cat(self.weights) if self.weights else torch.zeros(0), offsets


@dataclass
class Occurrences:
    """Where the new tokens are in the chunked training split. lengths, doc_of [C]; chunk, pos, word [O]
    for every occurrence, ordered by chunk then position."""

    lengths: np.ndarray
    doc_of: np.ndarray
    chunk: np.ndarray
    pos: np.ndarray
    word: np.ndarray

    def expected_cost(self, pi_word: np.ndarray, rate: float) -> float:
        """Expected positions run for anchor probabilities pi_word [k] and whole-chunk rate r."""
        covered = self._covered(pi_word)
        return float(rate * self.lengths.sum() + (1.0 - rate) * covered.sum())

    def _covered(self, pi_word: np.ndarray) -> np.ndarray:
        """[O] expected positions each occurrence's segment adds: seg_o (1 - prod_{o' >= o in chunk}(1 - pi))."""
        return self.segments() * (1.0 - np.exp(self.suffix_log_q(pi_word)))

    def suffix_log_q(self, pi_word: np.ndarray) -> np.ndarray:
        """[O] log prod(1 - pi) over the occurrences at or after each one, within its chunk."""
        log_q = np.log1p(-np.minimum(pi_word[self.word], ALMOST_ONE))
        if not len(log_q):
            return log_q
        suffix = np.r_[np.cumsum(log_q[::-1])[::-1], 0.0]
        first = self.first_in_chunk()
        stops = np.r_[np.flatnonzero(first)[1:], len(log_q)]  # one past each chunk's last occurrence
        return suffix[:-1] - suffix[stops[np.cumsum(first) - 1]]

    def segments(self) -> np.ndarray:
        """[O] positions after the previous occurrence in the chunk, up to and including this one."""
        previous = np.where(self.first_in_chunk(), -1, np.r_[-1, self.pos[:-1]])
        return (self.pos - previous).astype(np.float64)

    def first_in_chunk(self) -> np.ndarray:
        """[O] whether each occurrence is the first of its chunk."""
        return np.r_[True, self.chunk[1:] != self.chunk[:-1]][: len(self.chunk)]


def chunks_of(ids: list[int]) -> list[list[int]]:
    return [ids[i : i + CHUNK_TOKENS] for i in range(0, len(ids), CHUNK_TOKENS)] or [[]]


def sample_domain(
    tokenizer: PreTrainedTokenizerBase,
    documents: Sequence[str],
    tokens_before: int,
    k: int,
    *,
    max_positions: int | None,
    min_sampled_occurrences: int,
    calibration_fraction: float,
    seed: int,
    tail: int = 0,
    progress: bool = True,
    position_cap: int | None = None,
) -> DomainSample:
    """Sample chunks of ``documents`` (tokenized by the expanded ``tokenizer``) for fitting ``k`` new tokens.

    max_positions: the budget (None: what min_sampled_occurrences per word costs, within the AUTO_ bounds, and
    at most ``position_cap``: the positions whose cached states fit in memory, see states_position_cap);
    tail: tokens kept (unweighted) after each chunk's last kept position, for distillation windows.
    """
    if not documents:
        raise InvalidInputError("fit and distill need domain text: the corpus has no training documents")
    occ = _scan(tokenizer, documents, tokens_before, k, progress)
    counts = np.bincount(occ.word, minlength=k)
    if counts.sum() == 0:
        raise InvalidInputError("none of the new words occurs in the training text, so there is nothing to fit them to; "
                         "use a corpus that contains them, or mean/subword rows, which need no text")
    wanted = min_sampled_occurrences / (1.0 - calibration_fraction)
    budget = max_positions if max_positions is not None else min(auto_budget(occ, counts, wanted),
                                                                 position_cap or AUTO_MAX_POSITIONS)
    pi_word, rate = anchor_probabilities(occ, counts, wanted, budget)
    rng = np.random.default_rng(seed)
    is_cal = rng.random(len(occ.lengths)) < calibration_fraction
    drawn = rng.random(len(occ.word)) < pi_word[occ.word]
    cut = np.zeros(len(occ.lengths), dtype=np.int64)
    np.maximum.at(cut, occ.chunk[drawn], occ.pos[drawn] + 1)
    whole = rng.random(len(occ.lengths)) < rate
    cut[whole] = occ.lengths[whole]
    chosen = np.flatnonzero(cut > 0)
    if not len(chosen):
        raise InvalidInputError(f"a budget of {budget} positions drew no text to fit on: raise sample_max_positions")
    chunks = _chunks(tokenizer, documents, occ.doc_of, chosen)
    keep = _keep_probabilities(occ, pi_word, rate, chosen, cut)
    ids = [chunk[: int(cut[c]) + tail] for chunk, c in zip(chunks, chosen.tolist())]
    raw = [np.r_[1.0 / p, np.zeros(len(chunk) - len(p))] for chunk, p in zip(ids, keep)]
    weights = _post_stratified(occ, is_cal, chosen, ids, raw, tokens_before, k)
    return DomainSample(ids=ids, weights=weights, calibration=torch.tensor(is_cal[chosen]),
                        counts=torch.tensor(counts), tokens_before=tokens_before, scanned_tokens=int(occ.lengths.sum()),
                        budget=int(budget))


def _post_stratified(occ: Occurrences, is_cal: np.ndarray, chosen: np.ndarray, ids: list[list[int]],
                     raw: list[np.ndarray], tokens_before: int, k: int) -> list[Tensor]:
    """The weights rescaled, within each part (fitting, calibration), so that they add up exactly to the known
    totals of each stratum: the occurrences of each new word, and the positions with an old target. The
    Horvitz-Thompson weights only match them in expectation; the balance between a word's occurrences and
    the rest is what the fit learns its probability from, so it is made exact (a ratio estimator)."""
    flat_ids = np.concatenate([np.asarray(c, dtype=np.int64) for c in ids])
    flat = np.concatenate(raw)
    part = np.repeat(is_cal[chosen], [len(c) for c in ids])
    stratum = np.where(flat_ids >= tokens_before, flat_ids - tokens_before, k)  # k: an old target
    chunk_part = is_cal[occ.chunk] if len(occ.chunk) else np.zeros(0, dtype=bool)
    for side in (False, True):
        known = np.bincount(occ.word[chunk_part == side], minlength=k + 1).astype(np.float64)
        known[k] = occ.lengths[is_cal == side].sum() - known[:k].sum()
        mine = (part == side) & (flat > 0)
        found = np.bincount(stratum[mine], weights=flat[mine], minlength=k + 1)
        scale = np.where(found > 0, known / np.maximum(found, 1e-300), 1.0)
        flat[mine] *= scale[stratum[mine]]
    bounds = np.cumsum([len(c) for c in ids])[:-1]
    return [torch.tensor(w, dtype=torch.float32) for w in np.split(flat, bounds)]


def states_position_cap(d: int, available: int | None) -> int | None:
    """The most positions whose cached states (float32 [P, d] on the CPU, plus a few floats each) fit in
    STATES_SHARE of ``available`` bytes, never below MIN_STATES_POSITIONS; None where memory cannot be told.
    Example: d = 4,096 and 16 GiB available give 262,080 (above AUTO_MAX_POSITIONS: no cap)."""
    if available is None:
        return None
    return max(MIN_STATES_POSITIONS, int(STATES_SHARE * available) // (4 * (d + 8)))


def auto_budget(occ: Occurrences, counts: np.ndarray, wanted: float) -> int:
    """Positions that ``wanted`` anchors per word cost, over NEW_WORD_SHARE, within the AUTO_ bounds."""
    need = occ.expected_cost(_pi(counts, wanted, 0.0, 1.0), 0.0) / NEW_WORD_SHARE
    return int(min(AUTO_MAX_POSITIONS, max(AUTO_MIN_POSITIONS, need)))


def anchor_probabilities(occ: Occurrences, counts: np.ndarray, wanted: float, budget: float) -> tuple[np.ndarray, float]:
    """(pi [k], r): anchors get max(a, s * wanted / count), spending NEW_WORD_SHARE of ``budget`` (s < 1 only
    when even the quota does not fit, a > 0 only when it does); whole chunks get r, spending the rest."""
    share = NEW_WORD_SHARE * budget

    def cost(a: float, s: float) -> float:
        return occ.expected_cost(_pi(counts, wanted, a, s), 0.0)

    a, s = 0.0, 1.0
    if cost(0.0, 1.0) > share:
        s = _bisect(lambda x: cost(0.0, x) - share)
    elif cost(1.0, 1.0) > share:
        a = _bisect(lambda x: cost(x, 1.0) - share)
    else:
        a = 1.0
    pi = _pi(counts, wanted, a, s)
    covered, total = occ.expected_cost(pi, 0.0), float(occ.lengths.sum())
    rate = min(1.0, max(0.0, (budget - covered) / (total - covered))) if total > covered else 1.0
    return pi, rate


def _pi(counts: np.ndarray, wanted: float, a: float, s: float) -> np.ndarray:
    need = np.minimum(1.0, wanted / np.maximum(counts, 1))
    return np.where(counts > 0, np.minimum(1.0, np.maximum(a, s * need)), 0.0)


def _keep_probabilities(occ: Occurrences, pi_word: np.ndarray, rate: float, chosen: np.ndarray,
                        cut: np.ndarray) -> list[np.ndarray]:
    """For each chosen chunk, P_t = 1 - (1 - r) prod_{anchors at or after t} (1 - pi) for t < its cut."""
    q = np.exp(occ.suffix_log_q(pi_word))
    seg = occ.segments().astype(np.int64)
    bounds = np.searchsorted(occ.chunk, np.stack([chosen, chosen + 1]))
    found = []
    for c, lo, hi in zip(chosen.tolist(), bounds[0].tolist(), bounds[1].tolist()):
        covered = np.repeat(q[lo:hi], seg[lo:hi])
        q_t = np.r_[covered, np.ones(occ.lengths[c] - len(covered))][: cut[c]]
        found.append(1.0 - (1.0 - rate) * q_t)
    return found


def _scan(tokenizer, documents, tokens_before, k, progress) -> Occurrences:
    lengths, doc_of, chunk, pos, word = [], [], [], [], []
    bar = tqdm(total=len(documents), desc="scanning domain text", unit="doc", disable=not progress, mininterval=1.0)
    for start in range(0, len(documents), BATCH_DOCUMENTS):
        batch = tokenizer(list(documents[start : start + BATCH_DOCUMENTS]), add_special_tokens=False)["input_ids"]
        for offset, ids in enumerate(batch):
            for piece in chunks_of(ids):
                array = np.asarray(piece, dtype=np.int64)
                where = np.flatnonzero(array >= tokens_before)
                chunk.append(np.full(len(where), len(lengths)))
                pos.append(where)
                word.append(array[where] - tokens_before)
                lengths.append(len(piece))
                doc_of.append(start + offset)
        bar.update(len(batch))
    bar.close()
    flat = (lambda parts: np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, dtype=np.int64))
    return Occurrences(np.array(lengths, dtype=np.int64), np.array(doc_of), flat(chunk), flat(pos), flat(word))


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
