"""LearnContext: the data a data-driven strategy learns its rows from, built on demand and shared.

A strategy declares what it needs (Strategy.needs, from NEEDS); the context computes each thing the first
time it is asked for and keeps it for the other strategies of the same expansion (and, through ``learned_cache``,
for other strategy pairs of one diagnosis):
- sample(): the weighted sample of the training text (sampling.py), drawn once per seed and sampling options;
- windows(context, after): every occurrence of a new word in the sample, as distillation windows;
- states(): one forward pass over the sample with the final input rows: hidden states, log Z, targets, with
  each position's weight and calibration flag (computed once per context).
Asking for something not declared is a bug in the strategy, and raises.

Left out: choosing and running strategies (orchestrate.py); what a strategy does with the data.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

import torch
from torch import Tensor, nn

from ..config import ExpandConfig
from ..forward import PassStats, run_pass
from ..tokenization import start_token_id
from .sampling import DomainSample, sample_domain, states_position_cap
from .windows import Window, windows_in

if TYPE_CHECKING:
    from ..planning import TokenPlan
    from ..strategies import DataDrivenStrategy, Learned


@dataclass
class SampleStates:
    """states of the sample's scored positions [P]: pass stats, weight (0: context only), calibration flag."""

    stats: PassStats
    weight: Tensor
    calibration: Tensor


@dataclass
class LearnContext:
    """model: the original model (frozen); plan: the token plan; documents: the training text;
    tail: tokens kept after each sampled chunk (the largest any data-driven strategy reads past it);
    learned_cache: shared between contexts of one diagnosis; needs: what the current strategy declared;
    input_rows: the final input rows [k, d], set before output-side strategies run."""

    model: nn.Module
    plan: "TokenPlan"
    config: ExpandConfig
    documents: Sequence[str]
    tail: int
    learned_cache: dict = field(default_factory=dict)
    progress: bool = False
    needs: frozenset[str] = frozenset()
    input_rows: Tensor | None = None
    computed: dict = field(default_factory=dict)  # shared by every view of this context

    @property
    def words(self) -> list[str]:
        return [e.word for e in self.plan.entries]

    @property
    def k(self) -> int:
        return len(self.plan.entries)

    @property
    def tokens_before(self) -> int:
        return self.plan.tokens_before

    @property
    def start_id(self) -> int:
        return start_token_id(self.plan.tokenizer)

    def learned(self, strategy: "DataDrivenStrategy", start: Tensor, bias: Tensor | None = None, *,
                cached: bool = True) -> "Learned":
        """strategy.learn on a view of this context with the strategy's options. With ``cached``, the result is
        kept in ``learned_cache`` by strategy, options and sample (it must not depend on the other side), so a diagnosis,
        or `joint` reusing distill's rows, learns it once."""
        options = self.config.options_for(strategy.name)
        key = ("learned", strategy.name, options, self.sample_key())
        if cached and key in self.learned_cache:
            return self.learned_cache[key]
        result = strategy.learn(self.for_strategy(strategy.needs), start, bias, options)
        if cached:
            self.learned_cache[key] = result
        return result

    def for_strategy(self, needs: frozenset[str]) -> "LearnContext":
        """A view of this context for a strategy that declared ``needs`` (the computed data is shared)."""
        return dataclasses.replace(self, needs=needs)

    def _require(self, need: str) -> None:
        if need not in self.needs:
            raise RuntimeError(f"the strategy asked for {need!r} without declaring it in its needs {sorted(self.needs)}")

    def sample_key(self) -> tuple[Any, ...]:
        return ("sample", self.config.seed, self.config.sampling, self.tail)

    def position_cap(self) -> int | None:
        """The default sample's cap: the positions whose cached states fit in the CPU's available memory."""
        from ..memory import available_bytes

        d = self.model.get_input_embeddings().weight.shape[1]
        return states_position_cap(d, available_bytes(torch.device("cpu")))

    def sample(self) -> DomainSample:
        """The weighted sample of the training text (drawn once per seed, sampling options and tail)."""
        if not self.needs & {"sample", "states", "windows"}:
            self._require("sample")
        key = self.sample_key()
        if key not in self.learned_cache:
            options = self.config.sampling
            self.learned_cache[key] = sample_domain(self.plan.tokenizer, self.documents, self.tokens_before, self.k,
                                            max_positions=options.max_positions, seed=self.config.seed,
                                            min_sampled_occurrences=options.min_sampled_occurrences,
                                            calibration_fraction=options.calibration_fraction, tail=self.tail,
                                            progress=self.progress, position_cap=self.position_cap())
        return self.learned_cache[key]

    def windows(self, context: int, after: int) -> list[Window]:
        """Every occurrence of a new word in the sample, with ``context`` tokens before it and ``after`` after."""
        self._require("windows")
        sample = self.sample()
        return [w for chunk, cal in zip(sample.ids, sample.calibration.tolist())
                for w in windows_in(chunk, self.plan.pieces, self.tokens_before, self.start_id, context=context,
                                    after=after, calibration=cal)]

    def states(self) -> SampleStates:
        """One pass over the sample's scored chunks with the final input rows (computed once per context)."""
        self._require("states")
        if "states" not in self.computed:
            sample = self.sample()
            began = time.perf_counter()
            stats = run_pass(self.model, sample.scored(), self.tokens_before, self.start_id, input_rows=self.input_rows,
                             progress=self.progress, desc="caching hidden states")
            self.computed["states_seconds"] = time.perf_counter() - began
            flat, offsets = sample.flat_weights()
            self.computed["states"] = SampleStates(stats, flat[offsets[stats.doc] + stats.index],
                                                   sample.calibration[stats.doc])
        return self.computed["states"]
