"""Mining a 100 MB corpus: time and peak memory (the corpus text itself is held; token ids never are).

The corpus is the King James Bible repeated to --megabytes, written to a temporary .txt file. Peak memory is
the process's maximum resident set size, printed next to the size of the text.

    python benchmarks/bench_mine.py --megabytes 100 --out benchmarks/results/mine.json
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

from vocab_expand import load_corpus, mine
from vocab_expand.corpus import iter_documents
from vocab_expand.loading import tokenizer_only
from vocab_expand.mining import heldout_saving


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=float, default=100)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--corpus", default="kjv", help="kjv, a .txt/.jsonl file or a folder (default: kjv)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    verses = list(iter_documents(args.corpus))
    tokenizer = tokenizer_only(args.model)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "big.txt"
        written = 0
        with path.open("w", encoding="utf-8") as handle:
            copy = 0
            while written < args.megabytes * 2**20:
                for verse in verses:  # a copy number keeps documents distinct, so both splits grow
                    line = f"{verse} ({copy})\n"
                    handle.write(line)
                    written += len(line.encode("utf-8"))
                copy += 1
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        start = time.perf_counter()
        corpus = load_corpus(path)
        load_s = time.perf_counter() - start
        start = time.perf_counter()
        found = mine(tokenizer, corpus, top_k=100)
        mine_s = time.perf_counter() - start
        start = time.perf_counter()
        saving = heldout_saving(tokenizer, corpus, found)
        saving_s = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result = {"megabytes": written / 2**20, "documents": len(corpus.train) + len(corpus.heldout),
              "load_s": load_s, "mine_s": mine_s, "heldout_saving_s": saving_s, "peak_rss_mb": peak,
              "rss_before_mb": base, "top": [c.word for c in found[:10]], "heldout": saving}
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
