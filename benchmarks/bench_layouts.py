"""Issue 13's findings, measured per tokenizer layout: after expansion and a save-and-reload, how many existing
added tokens (specials, reserved) changed id, how many new ids decode as an existing special token, how many
words were skipped, and in how many KJV verses that contain a new word its new token is actually used.

Layouts: the tiny locally built ones from tests/helpers.py and the real Llama 3 and Qwen 2 vocabularies
(quicktok-v1's ranks). Words: the 100 KJV words that save the most tokens on each tokenizer (mid form).
Run it against any checkout's code to compare (main before the fix, this branch after):

    PYTHONPATH=src python benchmarks/bench_layouts.py --out benchmarks/results/layouts.json
    PYTHONPATH=/path/to/other/checkout/src python benchmarks/bench_layouts.py --keep-going
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import helpers  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402
from vocab_expand import Corpus, load_corpus, mine  # noqa: E402
from vocab_expand.config import ExpandConfig  # noqa: E402
from vocab_expand.expansion import plan_tokens  # noqa: E402

LAYOUTS = {"llama3_tiny": helpers.llama3_style, "qwen2_tiny": helpers.qwen_style,
           "llama2_tiny": helpers.llama2_style, "unigram_tiny": helpers.unigram_style,
           "llama3_real": helpers.real_llama3, "qwen2_real": helpers.real_qwen2}


def measure(tokenizer, verses: list[str], top_k: int) -> dict[str, object]:
    words = [c.word for c in mine(tokenizer, Corpus("sample", verses, []), top_k=top_k, min_count=2, progress=False)]
    plan = plan_tokens(tokenizer, words, ExpandConfig())
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


def plan_seconds(tokenizer, n: int) -> float:
    """Seconds plan_tokens takes for n synthetic words that no vocabulary holds whole."""
    letters = "abcdefghijklmnopqrstuvwxyz"
    words = [f"Zq{letters[i % 26]}{letters[i // 26 % 26]}{letters[i // 676 % 26]}x" for i in range(n)]
    start = time.perf_counter()
    plan_tokens(tokenizer, words, ExpandConfig())
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", default="kjv", help="kjv, a .txt/.jsonl file or a folder (default: kjv)")
    parser.add_argument("--verses", type=int, default=5000, help="documents of the train split used")
    parser.add_argument("--words", type=int, default=100, help="mined words per tokenizer")
    parser.add_argument("--layouts", default=",".join(LAYOUTS), help="comma-separated, from: " + ", ".join(LAYOUTS))
    parser.add_argument("--plan-words", type=int, default=0, help="also time plan_tokens with this many synthetic "
                        "words (Zqabcx, ...) per layout")
    parser.add_argument("--keep-going", action="store_true", help="record a layout's error and go on (to run the "
                        "code before the fix, which crashes on some layouts)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    verses = list(load_corpus(args.corpus).train[: args.verses])
    results = {}
    print("| layout | words | new tokens | words skipped | added tokens moved | new ids decoding as a special "
          "| verses with a new word | ... using its new token |")
    print("|---|---|---|---|---|---|---|---|")
    for name in args.layouts.split(","):
        try:
            tokenizer = LAYOUTS[name]()
            r = results[name] = measure(tokenizer, verses, args.words)
            if args.plan_words:
                r["plan_seconds"] = plan_seconds(tokenizer, args.plan_words)
                print(f"planning {args.plan_words} words on {name}: {r['plan_seconds']:.2f} s")
            print(f"| {name} | {r['words']} | {r['tokens']} | {r['skipped']} | {r['moved']} | {r['as_special']} "
                  f"| {r['verses']} | {r['used']} |")
        except Exception as error:
            if not args.keep_going:
                raise
            results[name] = {"error": f"{type(error).__name__}: {error}"}
            print(f"| {name} | error: {type(error).__name__}: {str(error)[:80]} |")
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
