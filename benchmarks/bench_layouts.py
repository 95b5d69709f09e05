"""Issue 13's findings, measured per tokenizer layout: after expansion and a save-and-reload, how many existing
added tokens (specials, reserved) changed id, how many new ids decode as an existing special token, how many
words were skipped, and in how many KJV verses that contain a new word its new token is actually used.

Layouts: the tiny locally built ones from tests/helpers.py and the real Llama 3 and Qwen 2 vocabularies
(quicktok-v1's ranks). Words: the 100 KJV words that save the most tokens on each tokenizer (mid form).
Run it against any checkout's code to compare (main before the fix, this branch after):

    PYTHONPATH=src python benchmarks/bench_layouts.py
    PYTHONPATH=/path/to/other/checkout/src python benchmarks/bench_layouts.py
"""

from __future__ import annotations

import re
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import helpers  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402
from vocab_expand import Corpus, load_corpus, mine  # noqa: E402
from vocab_expand.expansion import make_config, plan_tokens  # noqa: E402

LAYOUTS = {"llama3 (tiny)": helpers.llama3_style, "qwen2 (tiny)": helpers.qwen_style,
           "llama2 (tiny)": helpers.llama2_style, "unigram (tiny)": helpers.unigram_style,
           "llama3 (real vocab)": helpers.real_llama3, "qwen2 (real vocab)": helpers.real_qwen2}
VERSES = 5000


def measure(tokenizer, verses: list[str]) -> dict[str, object]:
    words = [c.word for c in mine(tokenizer, Corpus("kjv-sample", verses, []), top_k=100, progress=False)]
    plan = plan_tokens(tokenizer, words, make_config())
    with tempfile.TemporaryDirectory() as tmp:
        plan.tokenizer.save_pretrained(tmp)
        loaded = AutoTokenizer.from_pretrained(tmp)
    moved = sum(loaded.convert_ids_to_tokens(i) != t.content for i, t in tokenizer.added_tokens_decoder.items())
    specials = {t.content for t in tokenizer.added_tokens_decoder.values()}
    as_special = sum(loaded.convert_ids_to_tokens(i) in specials for i in plan.new_token_ids)
    new_ids = set(plan.new_token_ids)
    added_words = {e.word for e in plan.entries}
    pattern = re.compile(r"(?<= )(?:" + "|".join(map(re.escape, added_words or ["\0"])) + r")(?!\w)")
    with_word = [v for v in verses if pattern.search(v)]  # the mid form: after a space, as a whole word
    used = sum(any(i in new_ids for i in loaded(v, add_special_tokens=False)["input_ids"]) for v in with_word)
    whole = sum(1 for s in plan.skipped if not getattr(s, "form", ""))
    return {"words": len(words), "tokens": len(plan.entries), "skipped": whole, "moved": moved,
            "as_special": as_special, "verses": len(with_word), "used": used}


def main() -> None:
    verses = list(load_corpus("kjv").train[:VERSES])
    print("| layout | words | new tokens | words skipped | added tokens moved | new ids decoding as a special "
          "| verses with a new word | ... using its new token |")
    print("|---|---|---|---|---|---|---|---|")
    for name, build in LAYOUTS.items():
        try:
            r = measure(build(), verses)
            print(f"| {name} | {r['words']} | {r['tokens']} | {r['skipped']} | {r['moved']} | {r['as_special']} "
                  f"| {r['verses']} | {r['used']} |")
        except Exception as error:  # the code before the fix crashes on some layouts: that is a result too
            print(f"| {name} | error: {type(error).__name__}: {str(error)[:80]} |")


if __name__ == "__main__":
    main()
