"""Expansion time and peak memory, side by side in one run.

Methods on the same matrix and k:
  copy            a plain copy of the matrix into one with k more rows (the floor any resize pays)
  ours_mean       vocab_expand's embedding growth with mean rows (expand() minus the tokenizer)
  ours_mean_cov   the same with mean_cov rows (cheaper exact sampler chosen by k)
  hf_mean         transformers' model.resize_token_embeddings(n + k, mean_resizing=True)
Matrices: Gemma 3 270M's 262,144 x 640 input matrix (from the gemma extra; a synthetic matrix of that
size when it is absent) and SmolLM2's 49,152 x 576 matrix. Each (matrix, k, method) runs in its own
subprocess; time is the median of --repeats runs, peak extra memory the highest resident-set growth
over the baseline seen by a 1 ms sampler during a run.

    python benchmarks/bench_expand.py --out benchmarks/results/expand.json
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import torch

METHODS = ["copy", "ours_mean", "ours_mean_cov", "hf_mean"]
MATRICES = {"gemma3-270m": (262144, 640), "smollm2-135m": (49152, 576), "tiny": (2048, 64)}


class PeakRSS:
    """Highest resident set size seen while the block runs, sampled every millisecond."""

    def __enter__(self):
        self.process = psutil.Process()
        self.base = self.process.memory_info().rss
        self.peak = self.base
        self.running = True
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self):
        while self.running:
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(0.001)

    def __exit__(self, *exc):
        self.running = False
        self.thread.join()
        self.peak = max(self.peak, self.process.memory_info().rss)

    @property
    def extra_mb(self) -> float:
        return (self.peak - self.base) / 2**20


def real_matrix(name: str) -> tuple[torch.Tensor, str]:
    """The model's input matrix when its package is installed, else a synthetic one of the same size."""
    if name == "tiny":  # the smoke test's setting (tests/test_architecture.py)
        return torch.randn(*MATRICES[name], generator=torch.Generator().manual_seed(0)), "synthetic"
    try:
        from vocab_expand import load_model

        model, _ = load_model(name)
        return model.get_input_embeddings().weight.detach().clone(), "real"
    except (ModuleNotFoundError, FileNotFoundError):
        n, d = MATRICES[name]
        g = torch.Generator().manual_seed(0)
        return torch.randn(n, d, generator=g) * 0.03 + 0.01, "synthetic"


def tiny_model(weight: torch.Tensor):
    """A one-layer tied model whose embedding Parameter wraps ``weight`` (no copy)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    n, d = weight.shape
    config = LlamaConfig(vocab_size=8, hidden_size=d, intermediate_size=8, num_hidden_layers=1,
                         num_attention_heads=1, num_key_value_heads=1, tie_word_embeddings=True)
    model = LlamaForCausalLM(config)
    embedding = model.get_input_embeddings()
    embedding.weight = torch.nn.Parameter(weight)
    embedding.num_embeddings = n
    model.lm_head.weight = embedding.weight
    model.config.vocab_size = n
    return model


def synthetic_plan(n: int, k: int):
    """A token plan of k new tokens after n, each standing for old token 0: the public seam (apply_plan) that
    grows the matrices exactly as expand() does after planning the tokenizer."""
    from vocab_expand import TokenPlan
    from vocab_expand.families import NewEntry

    entries = [NewEntry(word=f"w{i}", form="mid", token=f"w{i}", text=f" w{i}", pieces=(0,)) for i in range(k)]
    return TokenPlan(tokenizer=None, family="synthetic", tokens_before=n, words_given=k, entries=entries,
                     new_token_ids=list(range(n, n + k)), skipped=[], seconds=0.0)


def run_one(method: str, weight: torch.Tensor, model, k: int) -> None:
    """Run one method; ``model`` wraps ``weight`` and is rebuilt by the caller before each run (untimed)."""
    from vocab_expand import ExpandConfig, apply_plan

    n = weight.shape[0]
    if method == "copy":
        out = torch.empty(n + k, weight.shape[1], dtype=weight.dtype)
        out[:n].copy_(weight)
        return
    if method == "hf_mean":
        model.resize_token_embeddings(n + k, mean_resizing=True)
    else:
        name = method.removeprefix("ours_")
        apply_plan(model, synthetic_plan(n, k), ExpandConfig(input_init=name, output_init=name, inplace=True))
    assert model.get_input_embeddings().weight.shape[0] == n + k


def child(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    weight, kind = real_matrix(args.matrix)
    run_one(args.method, weight, tiny_model(weight), args.k)  # warm-up (allocator, first-call costs)
    times, extras = [], []
    for _ in range(args.repeats):
        model = tiny_model(weight)
        gc.collect()
        with PeakRSS() as peak:
            start = time.perf_counter()
            run_one(args.method, weight, model, args.k)
            times.append(time.perf_counter() - start)
        extras.append(peak.extra_mb)
    n, d = weight.shape
    print(json.dumps({"matrix": args.matrix, "kind": kind, "n": n, "d": d, "k": args.k, "method": args.method,
                      "seconds": statistics.median(times), "times": times, "peak_extra_mb": max(extras),
                      "new_matrix_mb": (n + args.k) * d * 4 / 2**20}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--matrices", nargs="+", default=[m for m in MATRICES if m != "tiny"], choices=list(MATRICES))
    parser.add_argument("--ks", nargs="+", type=int, default=[100, 10000])
    parser.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--matrix", help=argparse.SUPPRESS)
    parser.add_argument("--k", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--method", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    rows = []
    for matrix in args.matrices:
        for k in args.ks:
            for method in args.methods:
                cmd = [sys.executable, __file__, "--child", "--matrix", matrix, "--k", str(k), "--method", method,
                       "--repeats", str(args.repeats), "--threads", str(args.threads)]
                result = subprocess.run(cmd, capture_output=True, text=True, check=True)
                row = json.loads(result.stdout.strip().splitlines()[-1])
                rows.append(row)
                print(f"{matrix:<14} k={k:<6} {method:<14} {row['seconds']:8.3f} s  peak +{row['peak_extra_mb']:7.0f} MB"
                      f"  (new matrix {row['new_matrix_mb']:.0f} MB, {row['kind']})", flush=True)
    summary = summarize(rows)
    for line in summary:
        print(line)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"rows": rows, "summary": summary}, indent=2) + "\n")


def summarize(rows: list[dict]) -> list[str]:
    """Ratios measured side by side: speed-up over transformers, slowdown over the plain copy."""
    lines = []
    by = {(r["matrix"], r["k"], r["method"]): r for r in rows}
    for (matrix, k, method), row in by.items():
        if not method.startswith("ours"):
            continue
        hf, copy = by.get((matrix, k, "hf_mean")), by.get((matrix, k, "copy"))
        parts = [f"{matrix} k={k} {method}:"]
        if hf:
            parts.append(f"{hf['seconds'] / row['seconds']:.1f}x faster than hf_mean")
        if copy:
            parts.append(f"{row['seconds'] / copy['seconds']:.2f}x the plain copy's time")
        parts.append(f"peak extra {row['peak_extra_mb']:.0f} MB vs new matrix {row['new_matrix_mb']:.0f} MB")
        lines.append(" ".join(parts))
    return lines


if __name__ == "__main__":
    main()
