"""Cost of diagnose's KL/risk figures for 6 strategies, against one plain forward pass over the same text.

Side by side in one run, on the bundled SmolLM2, its kjv held-out sample (--max-tokens) and mined words:
  plain        one forward pass of the original model over the sample (logits only)
  ours_kl      diagnose(..., bits_per_character=False, generate=False): KL, moved mass, argmax, risk for all
               strategies (one pass, plus a [positions x k] product per strategy)
  naive_kl     the obvious way: the original pass plus, per strategy, a full expanded model's pass and a full
               softmax KL (7 passes)
  ours_full    diagnose(..., generate=False): adds bits per character (a pass per distinct input rows over the
               documents whose tokenization changed)

    python benchmarks/bench_diagnose.py --out benchmarks/results/diagnose.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from vocab_expand import ExpandConfig, apply_plan, load_corpus, load_model, mine, plan_tokens
from vocab_expand.diagnostics import DEFAULT_STRATEGIES, StrategyPair, diagnose, heldout_sample
from vocab_expand.forward import LOGIT_BUDGET, batches
from vocab_expand.metrics import full_softmax_kl
from vocab_expand.tokenization import start_token_id


@torch.inference_mode()
def forward_logits(model, sequences: list[list[int]], start: int):
    """Yield (group, logits [B, T, V], mask [B, T]) over the same batches run_pass uses."""
    rows = model.get_output_embeddings().weight.shape[0]
    for group in batches([len(s) for s in sequences], max(256, LOGIT_BUDGET // rows)):
        width = max(len(sequences[i]) for i in group)
        ids = torch.full((len(group), width), start, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for r, i in enumerate(group):
            ids[r, 1 : len(sequences[i])] = torch.tensor(sequences[i][:-1]) if len(sequences[i]) > 1 else ids[r, 1:1]
            mask[r, : len(sequences[i])] = 1
        yield group, model(input_ids=ids, attention_mask=mask).logits, mask.bool()


def plain(model, sequences, start) -> float:
    t = time.perf_counter()
    for _ in forward_logits(model, sequences, start):
        pass
    return time.perf_counter() - t


def naive_kl(model, tokenizer, words, docs, strategies, corpus) -> float:
    """Original logits once, then per strategy a full expanded model's logits and a full softmax KL."""
    t = time.perf_counter()
    start = start_token_id(tokenizer)
    sequences = tokenizer(docs, add_special_tokens=False)["input_ids"]
    n = len(tokenizer)
    original = [(g, logits[m]) for g, logits, m in forward_logits(model, sequences, start)]
    plan = plan_tokens(tokenizer, words, ExpandConfig())
    for spec in strategies:
        pair = StrategyPair.parse(spec)
        expansion = apply_plan(model, plan, ExpandConfig(input_init=pair.input, output_init=pair.output),
                               corpus=corpus)
        for (group, old), (_, new, mask) in zip(original, forward_logits(expansion.model, sequences, start)):
            full_softmax_kl(old, new[mask][:, : n + len(plan.entries)]).mean()
    return time.perf_counter() - t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--words", type=int, default=20)
    parser.add_argument("--max-tokens", type=int, default=4000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--corpus", default="kjv", help="kjv, a .txt/.jsonl file or a folder (default: kjv)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, tokenizer = load_model(args.model)
    corpus = load_corpus(args.corpus)
    words = [c.word for c in mine(tokenizer, corpus, args.words, progress=False)]
    docs = heldout_sample(corpus, tokenizer, args.max_tokens)
    sequences = tokenizer(docs, add_special_tokens=False)["input_ids"]
    strategies = [s for s in DEFAULT_STRATEGIES if s != "distill/fit"]  # the six that need no text
    common = dict(max_tokens=args.max_tokens, progress=False, generate=False)
    plain(model, sequences[:4], start_token_id(tokenizer))  # warm-up
    times = {"plain": plain(model, sequences, start_token_id(tokenizer))}
    t = time.perf_counter()
    diagnose(model, tokenizer, words, corpus, strategies, bits_per_character=False, **common)
    times["ours_kl"] = time.perf_counter() - t
    times["naive_kl"] = naive_kl(model, tokenizer, words, docs, strategies, corpus)
    t = time.perf_counter()
    diagnose(model, tokenizer, words, corpus, strategies, **common)
    times["ours_full"] = time.perf_counter() - t
    ratios = {name: value / times["plain"] for name, value in times.items()}
    tokens = sum(map(len, sequences))
    for name in times:
        print(f"{name:<10} {times[name]:8.1f} s   {ratios[name]:5.2f}x one plain forward pass")
    result = {"model": args.model, "words": len(words), "strategies": strategies, "heldout_tokens": tokens,
              "documents": len(docs), "seconds": times, "ratio_to_plain": ratios}
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
