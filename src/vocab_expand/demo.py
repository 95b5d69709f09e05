"""The main job, end to end on the bundled model and corpus.

1. Load the model and corpus; mine the words that save the most tokens.
2. Diagnose every strategy on the model and on its negative-logit twin (same distribution, all logits below
   -20: the situation of GPT-2 small or Gemma-2b, where zero and random rows collapse generation).
3. Expand with the defaults for a model with domain text (distill/fit, or joint on a tied model's shared row,
   learned from the train split) and save it.
4. Write OUT/report.md (both diagnoses side by side, figures, greedy generations from held-out text that stops
   just before a mined word, so the saved model's new tokens show), OUT/original/ and OUT/twin/
   (full diagnosis reports) and OUT/model/ (a plain transformers folder).

The rows are learned once: the twin's are the model's shifted as its head was (twin.shifted_rows, exact), and
the saved expansion writes the rows the diagnosis already learned (apply_plan with Diagnosis.rows).

Left out: options beyond the model, corpus and word count (the other commands take them).
"""

from __future__ import annotations

import os
from pathlib import Path

from .corpus import load_corpus
from .diagnostics import DEFAULT_STRATEGIES, diagnose
from .config import AUTO_WITH_TEXT, ExpandConfig
from .expansion import apply_plan
from .generation import PROMPTS, word_prompts
from .io import atomic_directory, write_json
from .loading import load_model
from .mining import heldout_saving, mine
from .report import demo_summary, table, write_into
from .twin import negative_logit_twin, shifted_rows

# expand's default with domain text, as diagnose names it (distill/fit; joint on a tied model's shared row).
DEFAULT_PAIR = "/".join(AUTO_WITH_TEXT)


def run_demo(model_name: str, corpus_name: str, top: int, output: str | os.PathLike, force: bool,
             *, max_tokens: int = 4000, load_options: dict | None = None) -> int:
    from .io import check_output_dir

    check_output_dir(output, force)
    model, tokenizer = load_model(model_name, **(load_options or {}))
    corpus = load_corpus(corpus_name)
    found = mine(tokenizer, corpus, top)
    words = [c.word for c in found]
    saving = heldout_saving(tokenizer, corpus, found)
    # Held-out text that stops just before a mined word (does the model write the new token?), then a general one.
    before_words = word_prompts(corpus.heldout, words)
    prompts = [*before_words, PROMPTS[0]]
    original = diagnose(model, tokenizer, words, corpus, DEFAULT_STRATEGIES, max_tokens=max_tokens, label=model_name,
                        prompts=prompts)
    print(table(original))
    twin_model = negative_logit_twin(model, tokenizer, corpus)
    learned = {name: shifted_rows(rows, model, twin_model) for name, rows in original.rows.items()
               if rows.details}  # what was learned from text; the other strategies' rows cost nothing
    twin = diagnose(twin_model, tokenizer, words, corpus, DEFAULT_STRATEGIES, max_tokens=max_tokens,
                    label=f"{model_name} negative-logit twin", rows=learned, prompts=prompts)
    del twin_model
    print(table(twin))
    result = apply_plan(model, original.plan, ExpandConfig(inplace=True), original.rows[DEFAULT_PAIR], corpus=corpus)
    with atomic_directory(output, force=force) as tmp:
        result.save(tmp / "model")
        write_json(tmp / "mined.json", {"candidates": [c.to_dict() for c in found], "heldout": saving})
        for name, diagnosis in (("original", original), ("twin", twin)):
            (tmp / name).mkdir()
            write_into(diagnosis, tmp / name)
        (tmp / "report.md").write_text(demo_summary(model_name, corpus_name, found, saving, result.report, original, twin,
                                                    DEFAULT_PAIR, before_words),
                                       encoding="utf-8")
    print(f"wrote {Path(output) / 'report.md'}; the expanded model is in {Path(output) / 'model'}")
    return 0
