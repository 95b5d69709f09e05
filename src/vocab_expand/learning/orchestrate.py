"""Running the data-driven strategies of an expansion: input side first, then output side on the states the
new input rows produce, each from the heuristic rows its rows() gave (also the fallback for rare words). A
strategy that learns the shared row of a tied model (sides ("input", "output"), e.g. joint) runs once.

Nothing here names a strategy: each declares its side, needs and options (strategies/base.py). Results are
cached by strategy, options and sample, so a diagnosis that pairs one input strategy with several output
strategies learns the input rows once. Every step's report goes to expansion.json under the strategy's name,
with the sample's facts under "sample".

Left out: the maths of each strategy (strategies/); where rows go (rows/grow.py).
"""

from __future__ import annotations

from typing import Any, NamedTuple, Sequence

from torch import Tensor, nn

from ..config import ExpandConfig
from ..planning import TokenPlan
from ..strategies import NEEDS, STRATEGIES, DataDrivenStrategy, Strategy, get_strategy
from .context import LearnContext


class StartRows(NamedTuple):
    """The heuristic rows the strategies start from: input [k, d]; output [k, d] and bias [k] or None."""

    input: Tensor
    output: Tensor | None
    bias: Tensor | None


def learn_rows(model: nn.Module, plan: TokenPlan, config: ExpandConfig, documents: Sequence[str],
               pair: tuple[Strategy, Strategy], start: StartRows, learned_cache: dict,
               progress: bool) -> tuple[StartRows, dict[str, Any]]:
    """The rows after every data-driven strategy of ``pair`` (input, output) has learned its side from the train
    ``documents``, and the details for the report (the sample's figures and each strategy's report)."""
    context = LearnContext(model, plan, config, documents, tail=sample_tail(config), learned_cache=learned_cache,
                           progress=progress, needs=NEEDS)  # the orchestration may read everything
    inp, out = pair
    details: dict[str, Any] = {}
    rows = start
    if isinstance(inp, DataDrivenStrategy) and inp.shares_row():
        learned = context.learned(inp, start.input)  # one row: the model is tied (check_strategies)
        details = {"sample": sample_facts(context), inp.name: learned.report}
        return rows._replace(input=learned.rows), details
    if isinstance(inp, DataDrivenStrategy):
        learned = context.learned(inp, start.input)
        rows, details[inp.name] = rows._replace(input=learned.rows), learned.report
    context.input_rows = rows.input
    if isinstance(out, DataDrivenStrategy) and start.output is not None:
        learned = context.learned(out, start.output, start.bias, cached=False)  # depends on the input rows
        rows, details[out.name] = rows._replace(output=learned.rows, bias=learned.bias), learned.report
    details = {"sample": sample_facts(context), **details}
    return rows, details


def sample_tail(config: ExpandConfig) -> int:
    """Tokens kept after each sampled chunk: the most any registered data-driven strategy reads past it. One
    value for all, so strategies paired differently in one diagnosis share one sample."""
    tails = [s.sample_tail(config.options_for(name)) for name, cls in STRATEGIES.items()
             if issubclass(cls, DataDrivenStrategy) and (s := get_strategy(name))]
    return max(tails, default=0)


def sample_facts(context: LearnContext) -> dict[str, Any]:
    """What the sample holds, and how long its states pass took, for the report."""
    sample, words = context.sample(), context.words
    fitting = sample.occurrences(calibration=False)
    return {
        "states_seconds": context.computed.get("states_seconds"),
        "chunks": len(sample.ids),
        "budget": sample.budget,
        "positions": sample.positions(),
        "calibration_chunks": int(sample.calibration.sum()),
        "training_tokens_scanned": sample.scanned_tokens,
        "occurrences_in_training_text": dict(zip(words, sample.counts.tolist())),
        "occurrences_in_fitting_sample": dict(zip(words, fitting.tolist())),
    }
