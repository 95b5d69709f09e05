"""Fitted initialization: held-out bits per character right after expansion, for every strategy, and what
distill/fit costs.

For each model and word count, in one run: mine the top words of the kjv train split; diagnose every
registered strategy (and the pairs that matter) on the held-out sample, fit and distill learning from the
train split only; then time a plain `expand(..., corpus=kjv)` with the defaults (distill/fit), with its
steps and the peak resident memory it added.

    python benchmarks/bench_fit.py --models smollm2-135m --words 100 --out benchmarks/results/fit_smollm2_100.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import time
from pathlib import Path

from vocab_expand import diagnose, expand, load_corpus, load_model, mine
from vocab_expand.config import ALIASES, ExpandConfig

STRATEGIES = ["zeros", "random", "hf_default", "mean", "mean_cov", "subword", "subword/mean", "subword/fit",
              "distill/mean", "distill/fit"]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run(model_name: str, k: int, corpus, max_tokens: int, strategies: list[str], timing: bool = True,
        options: dict | None = None) -> dict:
    options = options or {}
    model, tokenizer = load_model(model_name)
    words = [c.word for c in mine(tokenizer, corpus, k, progress=False)]
    cost = timed_expand(model, tokenizer, words, corpus, options) if timing else None
    found = diagnose(model, tokenizer, words, corpus, strategies, max_tokens=max_tokens, generate=False, **options)
    rows = {name: {"bpc_after": row["bpc_after"], "bpc_change_percent": row["bpc_change_percent"],
                   "kl_mean": row["kl"]["mean"], "kl_max": row["kl"]["max"],
                   "moved_mean": row["moved_probability"]["mean"], "within_bound": row["within_bound"],
                   "tied": row["tied"], **_fit_facts(row)}
            for name, row in found.strategies.items()}
    return {"model": model_name, "words": len(words), "k": found.figures["k"],
            "bpc_before": found.figures["bpc_before"], "hewitt_bound_nats": found.figures["hewitt_bound_nats"],
            "heldout_tokens": found.figures["tokens_before"], "strategies": rows, "cost": cost, "options": options}


def _fit_facts(row: dict) -> dict:
    details = row.get("data_driven", {})
    return {"fit_seconds": details.get("fit", {}).get("seconds"), "distill_seconds": details.get("distill", {}).get("seconds"),
            "fallback_words": len(details.get("fit", details.get("distill", {})).get("fallback_words", []))}


def timed_expand(model, tokenizer, words: list[str], corpus, options: dict) -> dict:
    """Wall time, steps and peak memory of a plain expand(..., corpus=...) with the defaults (distill/fit)."""
    rss_before = peak_rss_mb()
    began = time.perf_counter()
    result = expand(model, tokenizer, words, corpus=corpus, progress=True, **options)
    seconds = time.perf_counter() - began
    details = result.report["data_driven"]
    cost = {
        "expand_seconds": seconds,
        "distill_seconds": details["distill"].get("seconds"),
        "fit_solve_seconds": details["fit"]["seconds"],
        "peak_rss_added_mb": peak_rss_mb() - rss_before,
        "budget": details["sample"]["budget"],
        "positions": details["sample"]["positions"],
        "solved_positions": details["fit"]["solved_positions"],
        "distill_windows": details["distill"].get("windows"),
        "fallback_words": {"distill": details["distill"]["fallback_words"], "fit": details["fit"]["fallback_words"]},
        "reg": details["fit"]["reg"],
    }
    return cost


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="smollm2-135m")
    parser.add_argument("--words", default="100")
    parser.add_argument("--max-tokens", type=int, default=8000)
    parser.add_argument("--strategies", default=",".join(STRATEGIES))
    parser.add_argument("--no-timing", action="store_true", help="skip the timed expand (rows are computed in diagnose)")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="an ExpandConfig option for every expansion, e.g. distill_max_windows=4096 (repeatable)")
    parser.add_argument("--corpus", default="kjv", help="kjv, a .txt/.jsonl file or a folder (default: kjv)")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    corpus = load_corpus(args.corpus)
    options = dict(_option(item) for item in args.set)
    results = [run(m, int(k), corpus, args.max_tokens, args.strategies.split(","), timing=not args.no_timing,
                   options=options)
               for m in args.models.split(",") for k in args.words.split(",")]
    Path(args.out).write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    for r in results:
        print(f"{r['model']} k={r['k']}: bpc before {r['bpc_before']:.4f}"
              + (f"; distill/fit expand {r['cost']['expand_seconds']:.0f} s" if r["cost"] else ""))
        for name, row in sorted(r["strategies"].items(), key=lambda kv: kv[1]["bpc_after"]):
            print(f"  {name:14s} {row['bpc_change_percent']:+7.3f}%  KL mean {row['kl_mean']:.2e}  "
                  f"moved {100 * row['moved_mean']:.2f}%")


def _option(item: str) -> tuple[str, object]:
    """"field=value" with the value read as JSON where it parses (numbers, null, true), else as a string."""
    field, sep, value = item.partition("=")
    if not sep or field not in {f.name for f in dataclasses.fields(ExpandConfig)} | set(ALIASES):
        raise SystemExit(f"--set needs FIELD=VALUE with an ExpandConfig field, got {item!r}")
    try:
        return field, json.loads(value)
    except json.JSONDecodeError:
        return field, value


if __name__ == "__main__":
    main()
