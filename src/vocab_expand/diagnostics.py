"""`diagnose`: does the expanded model still work? KL, moved probability, risk, bits per character, generations.

For each strategy (an input/output pair), on the held-out split:
1. KL(p_old || p_new) on every prefix that contains no new token (the hidden state there does not depend on
   the new rows): log(1 + sum exp(h.e_new) / Z), with its mean, median, 99th percentile, maximum, histogram.
2. The probability moved to the new tokens, and how often a new token is the argmax.
3. The Hewitt bound log(1 + k/n) beside the measured KL.
4. Risk of the model itself: the distribution of log Z, and the KL that zero or random rows would cost,
   log(1 + k exp(-log Z)), before any strategy is chosen.
5. Bits per character of the held-out text, before and after (characters do not depend on the tokenizer).
6. Greedy and seeded sampled generations before and after.

The held-out sample (capped by max_tokens): every held-out document that holds a new word, up to half the
cap, plus a seeded random sample of the others; each document is weighted by the inverse of its (known)
probability of being drawn, so every figure estimates the whole split's without bias (Horvitz-Thompson, a
ratio for bits per character). Words that never occur in the split are listed; bits per character, the one
figure that needs occurrences, is then left out, and the others are still reported.

Cost: one forward pass of the original model gives every strategy's figures 1-4 (only a [P x k] product per
strategy). Bits per character needs a pass per distinct input rows, and only over documents whose
tokenization changed; the others reuse the original pass. Memory: a pass's states are dropped once no later
strategy reads the same input rows, and generations grow the model's matrices in place for the length of
the generation and restore them (rows.grow.grown_for), never copying the model. The peak memory of the call is
in the figures (memory.py).

Left out: parsing strategy pairs (pairs.py), drawing the held-out sample (heldout.py), generating
(generation.py), the verdict sentences (verdicts.py), writing the report (report.py), the twin (twin.py).
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

import torch
from torch import Tensor, nn
from transformers import PreTrainedTokenizerBase

from . import metrics
from .corpus import Corpus, require_corpus
from .errors import InvalidInputError
from .options import check_seed
from .config import ExpandConfig
from .memory import peak_memory
from .metrics import hewitt_bound
from .planning import TokenPlan, plan_tokens
from .rows.compute import NewRows, compute_rows
from .rows.policy import check_strategies
from .forward import PassStats, run_pass
from .heads import head_logits, paired_logits
from .rows.layout import embedding_layout
from .generation import PROMPTS, generations
from .heldout import HeldoutSample, heldout_sample, weighted_heldout_sample
from .strategies import Strategy
from .pairs import StrategyPair, parse_strategies, ran_label
from .rows.grow import grown_for
from .tokenization import check_words, start_token_id
from .verdicts import verdict

# Moved to their own modules; importable from here as before.
__all__ = ["DEFAULT_STRATEGIES", "MAX_TOKENS", "Diagnosis", "diagnose", "StrategyPair", "parse_strategies",
           "heldout_sample", "weighted_heldout_sample", "HeldoutSample", "generations", "verdict", "PROMPTS"]

DEFAULT_STRATEGIES = ("zeros", "random", "hf_default", "mean", "subword", "subword/mean", "distill/fit")
# Held-out tokens scored by default: about 20 s a pass for SmolLM2 on 2 CPU cores, enough for stable figures.
MAX_TOKENS = 8000


def summarize(values: Tensor, weights: Tensor | None = None) -> dict[str, float]:
    """mean, median, 99th percentile and maximum of a 1-D tensor; with ``weights`` [same shape], the weighted
    mean and quantiles (each value counts as its weight). Example: summarize(tensor([1., 3.]), tensor([3., 1.]))
    has mean 1.5 and median 1.0."""
    v = values.to(torch.float64)
    if weights is None or not v.numel() or bool((weights == weights.flatten()[0]).all()):
        return {"mean": v.mean().item(), "median": v.median().item(),
                "p99": torch.quantile(v, 0.99).item() if v.numel() else math.nan, "max": v.max().item()}
    w = weights.to(torch.float64)
    order = v.argsort()
    cumulative = w[order].cumsum(0)

    def quantile(q: float) -> float:
        at = torch.searchsorted(cumulative, q * cumulative[-1]).clamp(max=len(v) - 1)
        return v[order][at].item()

    return {"mean": (v * w).sum().item() / w.sum().item(), "median": quantile(0.5), "p99": quantile(0.99),
            "max": v.max().item()}


def weighted_mean(values: Tensor, weights: Tensor) -> float:
    return ((values.double() * weights).sum() / weights.sum()).item() if values.numel() else math.nan


@dataclass
class Diagnosis:
    """What :func:`diagnose` found. ``figures`` is JSON-ready; ``kl`` and ``log_z`` keep the raw values for plots."""

    figures: dict[str, Any]
    kl: dict[str, Tensor] = field(default_factory=dict)
    log_z: Tensor | None = None
    # The rows each strategy pair wrote, by name, and the token plan: apply_plan(model, plan, config, rows)
    # saves one of them without learning it again (the demo does).
    rows: dict[str, NewRows] = field(default_factory=dict)
    plan: TokenPlan | None = None

    @property
    def strategies(self) -> dict[str, dict[str, Any]]:
        return self.figures["strategies"]

    def save(self, path, *, force: bool = False) -> None:
        from .report import write_report

        write_report(self, path, force=force)


def diagnose(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    words: Iterable[str],
    corpus: Corpus,
    strategies: Iterable[str] | str = DEFAULT_STRATEGIES,
    *,
    max_tokens: int = MAX_TOKENS,
    seed: int = 0,
    prompts: Iterable[str] = PROMPTS,
    max_new_tokens: int = 20,
    progress: bool = True,
    label: str = "model",
    bits_per_character: bool = True,
    generate: bool = True,
    learned_cache: dict | None = None,
    rows: dict[str, NewRows] | None = None,
    **expand_options: Any,
) -> Diagnosis:
    """Expand ``model`` with ``words`` under each strategy and measure what that does on ``corpus.heldout``.

    ``strategies``: names or INPUT/OUTPUT pairs (a comma-separated string works too). ``max_tokens`` caps the
    held-out sample. ``bits_per_character=False`` or ``generate=False`` skip those parts (they need extra passes).
    Other keyword options go to the expansion (ExpandConfig fields such as tie_policy or forms). Strategies
    that learn from text (fit, distill) learn from ``corpus.train``; figures are always on ``corpus.heldout``.
    ``learned_cache``: a dict shared by diagnoses of the same model, words and corpus, so that what one learned
    (the text sample, cached states, distilled rows) is reused by the next, e.g. tied and untied runs.
    ``rows``: rows computed before, by pair name (as Diagnosis.rows holds them), used instead of computing them;
    the negative-logit twin's are the model's shifted (twin.shifted_rows).
    """
    check_max_tokens(max_tokens)
    check_seed(seed)
    corpus = require_corpus(corpus)
    pairs = parse_strategies(strategies)
    word_list = check_words(words)
    configs = {pair: ExpandConfig(input_init=pair.input, output_init=pair.output, seed=seed,
                                 **expand_options).resolved(True) for pair in pairs}  # diagnose always has text
    checked = {pair: check_strategies(model, config, True) for pair, config in configs.items()}  # before any work
    plan = addable_plan(tokenizer, word_list, expand_options)
    with peak_memory() as peak:
        sample = weighted_heldout_sample(corpus, tokenizer, plan, max_tokens, seed)
        runner = _Runner(model, tokenizer, sample, seed, progress, configs, checked, corpus, learned_cache)
        runner.rows_by_pair.update({StrategyPair.parse(name): given for name, given in (rows or {}).items()})
        runner.use_plan(plan)
        bits_per_character = bits_per_character and not runner.no_occurrences
        figures: dict[str, Any] = {"label": label, "model_class": type(model).__name__, **runner.header(),
                                   "strategies": {}}
        diagnosis = Diagnosis(figures=figures, log_z=runner.original.log_z, plan=plan)
        prompt_list = list(prompts) if generate else []
        figures["generations_before"] = generations(model, tokenizer, prompt_list, max_new_tokens, seed)
        for i, pair in enumerate(pairs):
            kl, row = runner.strategy_figures(pair, bits_per_character)
            runner.drop_passes(keep_for=pairs[i + 1 :])
            if prompt_list:
                row["generations"] = runner.generations_after(pair, prompt_list, max_new_tokens)
            row["verdict"] = verdict(ran_label(pair.name, row), row)
            figures["strategies"][pair.name] = row
            diagnosis.kl[pair.name] = kl
            diagnosis.rows[pair.name] = runner.rows(pair)
    figures["peak_memory"] = peak
    return diagnosis


def check_max_tokens(max_tokens: int) -> None:
    """max_tokens must be a positive integer: 0 or less once scored a single document and still gave a verdict."""
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise InvalidInputError(f"max_tokens must be an integer >= 1 (held-out tokens scored), got {max_tokens!r}")


def addable_plan(tokenizer: PreTrainedTokenizerBase, words: list[str], expand_options: dict[str, Any],
                 command: str = "diagnose") -> TokenPlan:
    """The token plan of a ``command`` that measures the new tokens (diagnose, compare): appended ids only, and
    InvalidInputError when no word can be added (nothing to measure)."""
    plan = plan_tokens(tokenizer, words, ExpandConfig(**expand_options))
    plan.require_appended(command)
    if not plan.entries:
        reasons = "; ".join(f"{s.word!r}: {s.reason}" for s in plan.skipped)
        raise InvalidInputError(f"none of the words can be added, so there is nothing to {command} ({reasons})")
    return plan


class _Runner:
    """Shared state of one diagnosis: the original pass, expanded tokenizations, passes per input rows."""

    def __init__(self, model, tokenizer, sample: HeldoutSample, seed: int, progress: bool, configs: dict[StrategyPair, Any],
                 checked: dict[StrategyPair, tuple[Strategy, Strategy]], corpus: Corpus,
                 learned_cache: dict | None = None):
        docs = sample.docs
        self.model, self.tokenizer, self.docs, self.corpus, self.sample = model, tokenizer, docs, corpus, sample
        self.rows_by_pair: dict[StrategyPair, NewRows] = {}
        self.learned_cache: dict = {} if learned_cache is None else learned_cache
        # Each pair's resolved config and its checked (input, output) strategies, made once by diagnose.
        self.configs, self.checked, self.seed, self.progress = configs, checked, seed, progress
        self.tokens_before = len(tokenizer)
        self.start_id = start_token_id(tokenizer)
        self.original_ids = tokenizer(docs, add_special_tokens=False)["input_ids"]
        self.original = run_pass(model, self.original_ids, self.tokens_before, self.start_id, progress=progress,
                                 desc="original model")
        self.characters = sum(len(d) for d in docs)
        # Weighted: characters and negative log-likelihood both estimate the whole split's (a ratio estimator).
        self.weighted_characters = float((torch.tensor([len(d) for d in docs], dtype=torch.float64) * sample.weights).sum())
        self.weight = sample.weights[self.original.doc]  # [P] each position counts as its document's weight
        nll = ((self.original.log_z - self.original.target_logit).double() * self.weight).sum().item()
        self.bpc_before = nll / math.log(2) / self.weighted_characters
        self.expanded_ids: list[list[int]] | None = None
        self.input_passes: dict[str, PassStats] = {}

    def rows(self, pair: StrategyPair) -> NewRows:
        """The pair's new rows, computed once (fit and distill learn from the corpus's train split)."""
        if pair not in self.rows_by_pair:
            self.rows_by_pair[pair] = compute_rows(self.model, self.plan, self.configs[pair], self.checked[pair],
                                                   self.corpus.train, learned_cache=self.learned_cache,
                                                   progress=self.progress)
        return self.rows_by_pair[pair]

    @contextmanager
    def expanded(self, pair: StrategyPair) -> Iterator[nn.Module]:
        """The model grown with the pair's rows for the length of a ``with`` block, then restored exactly."""
        reused = [i for i in self.plan.new_token_ids if i < self.plan.tokens_before]
        with grown_for(self.model, self.plan.tokens_before, self.rows(pair), self.configs[pair], reused_ids=reused):
            yield self.model

    def generations_after(self, pair: StrategyPair, prompts: list[str], max_new_tokens: int) -> list[dict[str, Any]]:
        """Generations of the model expanded with the pair's rows (grown in place, then restored)."""
        with self.expanded(pair) as model:
            return generations(model, self.plan.tokenizer, prompts, max_new_tokens, self.seed,
                               new_ids=set(self.plan.new_token_ids))

    def input_key(self, pair: StrategyPair) -> str:
        """The input strategy the pair's rows use (rows.input_strategy), told without computing them."""
        return self.checked[pair][0].name

    def drop_passes(self, keep_for: list[StrategyPair]) -> None:
        """Forget the passes [P, d] that none of the pairs ``keep_for`` reads (input_pass computes one again
        if a pair needs it after all)."""
        needed = {self.input_key(p) for p in keep_for}
        for key in [k for k in self.input_passes if k not in needed]:
            del self.input_passes[key]

    def use_plan(self, plan: TokenPlan) -> None:
        """Tokenize the sample with the plan; find the prefixes without new tokens and the words absent from it."""
        self.plan = probe = plan
        self.k = len(probe.entries)
        self.skipped = [s._asdict() for s in probe.skipped]
        self.expanded_ids = probe.tokenizer(self.docs, add_special_tokens=False)["input_ids"]
        self.changed = [i for i, (a, b) in enumerate(zip(self.original_ids, self.expanded_ids)) if a != b]
        present = {t for ids in self.expanded_ids for t in ids if t >= self.tokens_before}
        self.absent = [e.token for e, i in zip(probe.entries, probe.new_token_ids) if i not in present]
        self.absent_words = [e.word for e, i in zip(probe.entries, probe.new_token_ids) if i not in present]
        # Bits per character is the one figure that needs occurrences; KL, moved probability and risk do not.
        self.no_occurrences = not present
        first_new = {i: next((j for j, (a, b) in enumerate(zip(o, e)) if a != b), len(o))
                     for i, (o, e) in enumerate(zip(self.original_ids, self.expanded_ids))}
        limit = torch.tensor([first_new[d] for d in self.original.doc.tolist()])
        self.clean = self.original.index <= limit  # prefix holds no new token: hidden state independent of new rows

    def header(self) -> dict[str, Any]:
        log_z = self.original.log_z
        zero_kl = metrics.predicted_kl_zero_rows(log_z, self.k)
        return {
            "k": self.k, "n": self.tokens_before, "hewitt_bound_nats": hewitt_bound(self.k, self.tokens_before),
            "documents": len(self.docs), "characters": self.characters,
            "tokens_before": sum(map(len, self.original_ids)), "tokens_after": sum(map(len, self.expanded_ids)),
            "clean_prefixes": int(self.clean.sum()), "skipped_words": self.skipped, "absent_tokens": self.absent,
            "words_absent_from_heldout": self.absent_words,
            "sample": {"documents_with_words": self.sample.documents_with_words,
                       "heldout_documents_with_words": self.sample.heldout_documents_with_words,
                       "weighted": not bool((self.sample.weights == 1).all()),
                       "heldout_documents": len(self.corpus.heldout) if self.corpus is not None else None},
            "bpc_before": self.bpc_before,
            **({"bpc_note": "not measured: none of the words occurs in the held-out split"}
               if self.no_occurrences else {}),
            "risk": {"log_z": summarize(log_z, self.weight), "log_z_min": log_z.min().item(),
                     "predicted_kl_zero_rows": summarize(zero_kl, self.weight),
                     "predicted_moved_zero_rows": summarize(torch.sigmoid(math.log(self.k) - log_z), self.weight)},
        }

    def input_pass(self, pair: StrategyPair) -> PassStats:
        """Original-pass stats for unchanged documents plus a pass with the new input rows over changed ones.
        Cached by the input rows actually used, so strategies sharing them share the pass."""
        rows = self.rows(pair)
        key = rows.input_strategy
        if key not in self.input_passes:
            changed = [self.expanded_ids[i] for i in self.changed]
            fresh = run_pass(self.model, changed, self.tokens_before, self.start_id, progress=self.progress,
                             desc=f"input rows: {key}", input_rows=rows.input)
            fresh.doc = torch.tensor(self.changed)[fresh.doc]
            keep = ~torch.isin(self.original.doc, torch.tensor(self.changed))
            self.input_passes[key] = PassStats.concat([self.original.select(keep), fresh])
        return self.input_passes[key]

    def strategy_figures(self, pair: StrategyPair, with_bpc: bool = True) -> tuple[Tensor, dict[str, Any]]:
        rows = self.rows(pair)
        clean, weight = self.original.select(self.clean), self.weight[self.clean]
        new_logits = head_logits(self.model, clean.hidden, rows.head, rows.bias)
        kl = metrics.added_token_kl(clean.log_z, new_logits)
        moved = metrics.moved_probability(clean.log_z, new_logits)
        bound = hewitt_bound(self.k, self.tokens_before)
        row = {
            "input_strategy": rows.input_strategy,
            "output_strategy": rows.output_strategy,
            "tied": rows.tied,
            "kl": summarize(kl, weight),
            "hewitt_bound_nats": bound,
            "within_bound": bool((kl <= bound + 1e-6).all()),
            "share_within_bound": weighted_mean((kl <= bound + 1e-6).double(), weight),
            "moved_probability": {"mean": weighted_mean(moved, weight), "max": moved.max().item()},
            "new_token_argmax_share": weighted_mean((new_logits.max(dim=-1).values > clean.max_logit).double(), weight),
            **({"data_driven": rows.details} if rows.details else {}),
        }
        if with_bpc:
            row.update(self.bpc_figures(pair, rows.head, rows.bias))
        return kl, row

    def bpc_figures(self, pair: StrategyPair, rows: Tensor, bias: Tensor | None) -> dict[str, Any]:
        """Bits per character of the expanded model on its own tokenization of the sample."""
        after = self.input_pass(pair)
        all_new = head_logits(self.model, after.hidden, rows, bias)
        log_z_new = torch.logaddexp(after.log_z, torch.logsumexp(all_new, dim=-1))
        is_new = after.target >= self.tokens_before
        target_logit = after.target_logit.clone()
        target_logit[is_new] = all_new[is_new].gather(1, (after.target[is_new] - self.tokens_before)[:, None]).squeeze(1)
        weight = self.sample.weights[after.doc]
        nll = ((log_z_new - target_logit).double() * weight).sum().item()
        bpc_after = nll / math.log(2) / self.weighted_characters
        return {
            "bpc_after": bpc_after,
            "bpc_change_percent": 100.0 * (bpc_after / self.bpc_before - 1.0),
            "new_token_probability_on_new_targets":
                weighted_mean(torch.exp(target_logit[is_new] - log_z_new[is_new]), weight[is_new]),
            **self.adoption_figures(after.hidden[is_new], after.target[is_new] - self.tokens_before, target_logit[is_new]),
        }

    def adoption_figures(self, hidden: Tensor, word: Tensor, new_logit: Tensor) -> dict[str, Any]:
        """Where the text has a new word: how often its new token outranks the word's old first piece."""
        layout = embedding_layout(self.model)
        first = torch.tensor([p[0] for p in self.plan.pieces], dtype=torch.long)[word]
        head = layout.output if layout.output is not None else layout.input
        bias = head.bias.detach()[first] if getattr(head, "bias", None) is not None else None
        first_logit = paired_logits(self.model, hidden, head.weight.detach()[first], bias)
        share, per_word = metrics.adoption(new_logit, first_logit, word, self.k)
        names = [e.word + ("" if e.form == "mid" else f" ({e.form})") for e in self.plan.entries]
        return {"adoption": share,
                "adoption_per_word": {n: (None if math.isnan(v) else v) for n, v in zip(names, per_word.tolist())}}
