"""A data-driven strategy defined only here runs through expand, diagnose and compare (API and CLI) with no
change anywhere else: it declares its needs and typed options, and learns from the context it is given.

The toy: each new word's output row is `scale` times the mean of the sampled hidden states at the positions
where the word is the next token (weights ignored)."""

from __future__ import annotations


import pytest
import torch
from helpers import TINY_TEXT, make_model

import vocab_expand as ve
from vocab_expand.corpus import Corpus
from vocab_expand.strategies.base import STRATEGIES

WORDS = ["Jehoshaphat", "prophets"]
TRAIN = [t for t in TINY_TEXT for _ in range(6)] + [
    f"And Jehoshaphat sent {i} of the prophets unto the king of Israel." for i in range(30)]
CORPUS = Corpus("tiny", train=TRAIN, heldout=TRAIN[-6:] + TINY_TEXT[:2])
FAST = dict(sample_max_positions=3000, calibration_fraction=0.25)

PLUGIN = '''
from dataclasses import dataclass, field
import torch
from vocab_expand import DataDrivenStrategy, Learned, register_strategy

@dataclass(frozen=True)
class MeanStateOptions:
    scale: float = field(default=1.0, metadata={"help": "toy: multiple of the mean state"})

@register_strategy
class MeanState(DataDrivenStrategy):
    name = "toy_mean_state"
    summary = "mean hidden state where the word is next"
    source = "a test"
    sides = ("output",)
    needs = frozenset({"states"})
    options_class = MeanStateOptions

    def rows(self, old, request):
        return self.repeat_mean(old, request)

    def learn(self, context, start, start_bias, options):
        states = context.states()
        rows, learned = start.clone(), []
        for j, word in enumerate(context.words):
            at = (states.stats.target == context.tokens_before + j) & (states.weight > 0)
            if at.any():
                rows[j] = options.scale * states.stats.hidden[at].mean(0)
                learned.append(word)
        return Learned(rows, start_bias, {"learned": learned})
'''


@pytest.fixture()
def plugin():
    """Registers the toy (as a user's module would) and removes it afterwards."""
    namespace: dict = {}
    exec(compile(PLUGIN, "toy_plugin.py", "exec"), namespace)  # noqa: S102 (the plugin's own source)
    yield namespace
    STRATEGIES.pop("toy_mean_state", None)


def test_expand_uses_the_plugins_rows_and_its_typed_options(plugin, tiny_tokenizer):
    model = make_model("untied", len(tiny_tokenizer))
    result = ve.expand(model, tiny_tokenizer, WORDS, corpus=CORPUS, input_init="subword",
                       output_init="toy_mean_state", **FAST)
    n = len(tiny_tokenizer)
    head = result.model.lm_head.weight[n:]
    mean = model.lm_head.weight.mean(0)
    assert result.report["output_strategy"] == "toy_mean_state"
    assert sorted(result.report["data_driven"]["toy_mean_state"]["learned"]) == sorted(WORDS)
    assert all(not torch.allclose(row, mean) for row in head)
    halved = ve.expand(model, tiny_tokenizer, WORDS, corpus=CORPUS, input_init="subword",
                       output_init="toy_mean_state",
                       strategy_options={"toy_mean_state": plugin["MeanStateOptions"](scale=0.5)}, **FAST)
    torch.testing.assert_close(halved.model.lm_head.weight[n:], 0.5 * head)
    with pytest.raises(TypeError, match="MeanStateOptions"):
        ve.expand(model, tiny_tokenizer, WORDS, corpus=CORPUS, output_init="toy_mean_state",
                  strategy_options={"toy_mean_state": {"scale": 2.0}})


def test_diagnose_measures_the_plugin_like_any_strategy(plugin, tiny_tokenizer):
    model = make_model("untied", len(tiny_tokenizer))
    diagnosis = ve.diagnose(model, tiny_tokenizer, WORDS, CORPUS, ["mean", "subword/toy_mean_state"],
                            progress=False, generate=False, **FAST)
    row = diagnosis.strategies["subword/toy_mean_state"]
    assert row["output_strategy"] == "toy_mean_state" and "bpc_after" in row
    assert row["kl"] != diagnosis.strategies["mean"]["kl"]


def test_compare_and_the_cli_accept_the_plugin_and_its_options(plugin, tiny_tokenizer, tmp_path):
    model = make_model("untied", len(tiny_tokenizer))
    result = ve.compare(model, CORPUS, WORDS, "mean,subword/toy_mean_state", tmp_path / "runs",
                        tokenizer=tiny_tokenizer, progress=False, expand_options=FAST, steps=2, eval_every=1,
                        batch_size=2, seq_len=16, eval_tokens=100, warmup_steps=1)
    assert set(result.evaluations) == {"mean", "subword/toy_mean_state"}
    # The CLI's parser is built from the registry: the plugin's option is a flag, with its help.
    from vocab_expand.cli import build_parser

    parser = build_parser()
    args = parser.parse_args(["expand", "--word", "x", "-o", str(tmp_path / "o"), "--output-init", "toy_mean_state",
                              "--toy-mean-state-scale", "0.25"])
    from vocab_expand.cli import expand_config

    assert expand_config(args).options_for("toy_mean_state").scale == 0.25
