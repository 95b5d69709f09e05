"""The main job learns its rows once: the twin's are the model's shifted (exactly what learning on the twin
gives), and the saved expansion writes the rows the diagnosis learned."""

from __future__ import annotations

import copy
import json

import torch
from helpers import TINY_TEXT, make_model

import vocab_expand as ve
from vocab_expand import demo
from vocab_expand.generation import PROMPTS
from vocab_expand.rows import compute as rows_module
from vocab_expand.corpus import Corpus
from vocab_expand.config import ExpandConfig
from vocab_expand.planning import plan_tokens
from vocab_expand.rows.layout import embedding_layout, untie
from vocab_expand.twin import shifted_rows

WORDS = ["Jehoshaphat", "prophets"]
TRAIN = [t for t in TINY_TEXT for _ in range(6)] + [
    f"And Jehoshaphat sent {i} of the prophets unto the king of Israel." for i in range(30)]
FAST = dict(sample_max_positions=3000, distill_epochs=2)


def shifted_twin(model, *args, **kwargs):
    """negative_logit_twin's construction with a fixed shift: a tiny random model has no direction that lowers
    every logit, and the equivariance holds for any shift."""
    twin = copy.deepcopy(model)
    layout = embedding_layout(twin)
    if layout.tied:
        untie(twin, layout)
    with torch.no_grad():
        layout.output.weight.sub_(torch.linspace(-3.0, 5.0, layout.output.weight.shape[1]))
    return twin


def test_shifted_rows_are_what_learning_on_the_twin_gives(tiny_tokenizer):
    """fit and distill are shift-equivariant: the twin's learned rows are the model's, output rows shifted."""
    corpus = Corpus("tiny", train=TRAIN, heldout=TRAIN[-6:])
    model = make_model("untied", len(tiny_tokenizer), seed=0)
    twin = shifted_twin(model)
    # A fixed strength: on a tiny model the calibration loss is flat to 1e-5 nats between strengths, and float
    # rounding then picks either; the solve itself is shift-equivariant.
    config = ExpandConfig(input_init="distill", output_init="fit", fit_reg=1e-3, **FAST).resolved(True)
    plan = plan_tokens(tiny_tokenizer, WORDS, config)
    learned_on_model = rows_module.new_rows(model, plan, config, corpus)
    learned_on_twin = rows_module.new_rows(twin, plan, config, corpus)
    shared = shifted_rows(learned_on_model, model, twin)
    torch.testing.assert_close(shared.input, learned_on_twin.input)
    torch.testing.assert_close(shared.output, learned_on_twin.output, rtol=1e-3, atol=1e-3)
    assert not torch.allclose(shared.output, learned_on_model.output)  # the shift is real


def test_the_demo_learns_once_and_saves_the_rows_it_diagnosed(model_dir, tmp_path, monkeypatch):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(TRAIN * 3) + "\n", encoding="utf-8")
    calls = []
    learn = rows_module.learn_rows
    monkeypatch.setattr(rows_module, "learn_rows", lambda *a, **k: calls.append(1) or learn(*a, **k))
    monkeypatch.setattr(demo, "negative_logit_twin", shifted_twin)
    diagnosed = []
    diagnose = demo.diagnose
    monkeypatch.setattr(demo, "diagnose", lambda *a, **k: diagnosed.append(diagnose(*a, **k)) or diagnosed[-1])
    out = tmp_path / "demo"
    assert demo.run_demo(str(model_dir), str(corpus), 2, out, False, max_tokens=300) == 0
    assert len(calls) == 1  # the model's diagnosis learns; the twin and the saved expansion reuse its rows
    original, twin = diagnosed
    assert twin.strategies["distill/fit"]["data_driven"]["shared_from"].startswith("the original model's rows")
    report = json.loads((out / "model" / "expansion.json").read_text())
    saved, tokenizer = ve.load_model(out / "model")
    n = report["rows_before"]
    torch.testing.assert_close(saved.get_input_embeddings().weight[n:], original.rows["distill/fit"].input)
    assert report["tied"] and report["input_strategy"] == "joint"
    assert saved.get_output_embeddings().weight.data_ptr() == saved.get_input_embeddings().weight.data_ptr()
    # the generations start from held-out text that stops before a mined word, and name the new tokens written
    prompts = [g["prompt"] for g in original.figures["generations_before"]]
    assert len(prompts) >= 2 and prompts[-1] == PROMPTS[0]
    summary = (out / "report.md").read_text(encoding="utf-8")
    section = summary.split("## Greedy generations of the saved model")[1].split("## Greedy generations on the twin")[0]
    assert section.count("(new tokens: ") == len(prompts) - 1 and "distill/fit (ran joint)" in section
    assert section.count("(the held-out text goes on with ") == len(prompts) - 1
