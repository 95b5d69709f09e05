"""The main job, end to end on the bundled model and corpus: mine words, expand, save, and compare
greedy generations before and after on fixed prompts. Writes OUT/model/ (a loadable model) and OUT/demo.md.

Left out: the quality figures (KL, bits per character), which diagnostics adds.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .corpus import load_corpus
from .expansion import expand
from .io import atomic_directory, write_json
from .loading import load_model
from .mining import heldout_saving, mine

PROMPTS = (
    "And it came to pass, when the king",
    "The king of Judah was",
    "Then said Jehoshaphat",
    "My favourite programming language is",
)


@torch.inference_mode()
def greedy(model, tokenizer, prompt: str, max_new_tokens: int = 24) -> str:
    """The model's greedy continuation of ``prompt`` (the continuation only)."""
    ids = tokenizer(prompt, return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.eos_token_id)
    return tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)


def run_demo(model_name: str, corpus_name: str, top: int, output: str | os.PathLike, force: bool) -> int:
    model, tokenizer = load_model(model_name)
    corpus = load_corpus(corpus_name)
    found = mine(tokenizer, corpus, top)
    saving = heldout_saving(tokenizer, corpus, found)
    result = expand(model, tokenizer, [c.word for c in found])
    lines = [f"# vocab-expand demo: {model_name} on {corpus_name}", "",
             f"Added {len(result.new_tokens)} words ({result.report['input_strategy']} input rows, "
             f"{result.report['output_strategy']} output rows); held-out tokens saved: "
             f"{saving['tokens_saved']} of {saving['heldout_tokens']} ({saving['percent_saved']:.2f}%).", "",
             "| word | count | pieces before |", "|---|---:|---:|"]
    lines += [f"| {c.word} | {c.count} | {c.pieces} |" for c in found]
    lines += ["", "## Greedy generations", ""]
    for prompt in PROMPTS:
        before = greedy(model, tokenizer, prompt)
        after = greedy(result.model, result.tokenizer, prompt)
        lines += [f"**{prompt}**", "", f"- before: {before!r}", f"- after:  {after!r}", ""]
        print(f"{prompt!r}\n  before: {before!r}\n  after:  {after!r}")
    with atomic_directory(output, force=force) as tmp:
        result.save(tmp / "model")
        write_json(tmp / "mined.json", {"candidates": [c.to_dict() for c in found], "heldout": saving})
        (tmp / "demo.md").write_text("\n".join(lines), encoding="utf-8")
    print(f"wrote {Path(output) / 'demo.md'} and the expanded model in {Path(output) / 'model'}")
    return 0
