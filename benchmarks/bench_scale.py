"""Scale: expand (distill/fit, or joint on a tied model) and diagnose on real and model-sized bodies, with
wall time and peak memory, on a GPU or on the CPU.

Cases (--cases, comma-separated):
- model:NAME   a real model (bundled alias, folder or hub id) loaded with --device and --dtype;
- body:SHAPE   random weights of a published shape, made directly in --dtype on the device (the cost depends
               on the body, not on the weights' values), with the tokenizer of --tokenizer. SHAPE is one of
               llama3-8b, llama3.2-1b, or tiny (for CI);
- demo         `vocab-expand demo` end to end, timed as a subprocess.

For each model case and each --words count: mine that many words of the corpus's train split, time
`expand(model, tokenizer, words, corpus=corpus, inplace=True)` with the defaults (in place, as the CLI does: the
default returns a deep copy of the model), then time `diagnose` with the six strategies
that need no text and bits per character (no generations). Peak memory per step: torch's peak allocated on
CUDA, and the process's peak RSS (its high-water mark reset before each step where Linux allows it).

    python benchmarks/bench_scale.py --device cuda --out benchmarks/results/scale_cuda.json   # the GPU run
    python benchmarks/bench_scale.py --device cpu --out benchmarks/results/scale_cpu.json     # this CPU

Targets (issue #14): on one H100, SmolLM2 with 100 words end to end in at most 15 s and 1,000 words in at
most 90 s, its diagnosis in at most 10 s; the Llama-3-8B-shaped body within weights + 8 GB and 1,000 words in at
most 10 minutes; on the 2-core CPU, the Llama-3.2-1B-shaped bf16 body with peak RSS at most 2.5x its weights.
"""

from __future__ import annotations

import argparse
import copy
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from vocab_expand import diagnose, expand, load_corpus, load_model, mine
from vocab_expand.loading import resolve_device, resolve_dtype, tokenizer_only
from vocab_expand.memory import peak_memory

NO_TEXT = ["zeros", "random", "hf_default", "mean", "subword", "subword/mean"]
SHAPES = {  # published shapes (config.json of each model); vocabulary from --tokenizer
    "llama3-8b": dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                      intermediate_size=14336, tie_word_embeddings=False, rope_theta=500000.0),
    "llama3.2-1b": dict(hidden_size=2048, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
                        intermediate_size=8192, tie_word_embeddings=True, rope_theta=500000.0),
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                 intermediate_size=128, tie_word_embeddings=True),
}
DEFAULT_CASES = {"cuda": "model:smollm2-135m,body:llama3-8b,demo", "cpu": "body:llama3.2-1b,demo"}
DEFAULT_WORDS = {"cuda": "100,1000", "cpu": "100"}


def body(shape: str, tokenizer, device: torch.device, dtype: torch.dtype):
    """A Llama body of ``shape`` with random weights, made in ``dtype`` on ``device`` (never a float32 copy)."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(vocab_size=len(tokenizer), max_position_embeddings=8192, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, **SHAPES[shape])
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model.eval()


def weights_bytes(model) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def timed(step, device: torch.device):
    """(result, facts): wall seconds and peak memory of ``step()``."""
    with peak_memory() as peak:
        began = time.perf_counter()
        result = step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - began
    return result, {"seconds": seconds, "peak_rss_mb": peak["rss_mb"], "rss_scope": peak["rss_scope"],
                    "peak_cuda_mb": peak.get("cuda_mb")}


def run_model_case(case: str, args, device: torch.device, dtype: torch.dtype, corpus, options: dict) -> dict:
    kind, _, name = case.partition(":")
    if kind == "model":
        (model, tokenizer), load = timed(lambda: load_model(name, device=str(device), dtype=str(dtype).split(".")[-1]),
                                         device)
    else:
        tokenizer = tokenizer_only(args.tokenizer)
        model, load = timed(lambda: body(name, tokenizer, device, dtype), device)
    row = {"case": case, "device": str(device), "device_name": _device_name(device), "dtype": str(dtype),
           "parameters": sum(p.numel() for p in model.parameters()), "weights_gb": weights_bytes(model) / 2**30,
           "tied": model.get_input_embeddings().weight is getattr(model.get_output_embeddings(), "weight", None),
           "load": load, "expand": {}, "options": options}
    rows_before = model.get_input_embeddings().weight.shape[0]
    for k in [int(w) for w in args.words.split(",")]:
        words = [c.word for c in mine(tokenizer, corpus, k, progress=False)]
        # in place, as the CLI does and as a big model needs (expand's default returns a deep copy); the model
        # is then shrunk back to its old rows (bit-exact copies), and the tokenizer was a copy
        result, facts = timed(lambda: expand(model, copy.deepcopy(tokenizer), words, corpus=corpus, inplace=True,
                                             progress=args.progress, **options), device)
        row["expand"][str(k)] = {**facts, "tokens_added": len(result.new_tokens),
                                 "strategies": f"{result.report['input_strategy']}/{result.report['output_strategy']}",
                                 "parameters_added": result.report["parameters_added"]}
        del result
        model.resize_token_embeddings(rows_before)
    words = [c.word for c in mine(tokenizer, corpus, int(args.words.split(",")[0]), progress=False)]
    found, facts = timed(lambda: diagnose(model, tokenizer, words, corpus, NO_TEXT, max_tokens=args.max_tokens,
                                          generate=False, progress=args.progress, **options), device)
    row["diagnose"] = {**facts, "strategies": len(NO_TEXT), "heldout_tokens": found.figures["tokens_before"]}
    return row


def run_demo(args, device: torch.device) -> dict:
    """`vocab-expand demo` as a user runs it (the bundled model and corpus), in a subprocess."""
    with tempfile.TemporaryDirectory() as tmp:
        command = [sys.executable, "-m", "vocab_expand.cli", "demo", "-o", str(Path(tmp) / "demo"),
                   "--device", str(device), *args.demo_args.split()]
        began = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True)
        seconds = time.perf_counter() - began
    if done.returncode != 0:
        raise SystemExit(f"demo failed: {done.stderr[-2000:]}")
    return {"case": "demo", "device": str(device), "device_name": _device_name(device), "seconds": seconds,
            "command": " ".join(command[1:])}


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: %(default)s)")
    parser.add_argument("--dtype", default="bfloat16", help="the weights' dtype (default: %(default)s)")
    parser.add_argument("--cases", help="comma-separated cases (default: GPU: "
                                        f"{DEFAULT_CASES['cuda']}; CPU: {DEFAULT_CASES['cpu']})")
    parser.add_argument("--words", help="word counts expanded per model case (default: GPU 100,1000; CPU 100)")
    parser.add_argument("--tokenizer", default="smollm2-135m", help="the tokenizer of body: cases")
    parser.add_argument("--corpus", default="kjv")
    parser.add_argument("--max-tokens", type=int, default=8000, help="held-out tokens diagnosed")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="an ExpandConfig option for every expansion (repeatable), as in bench_fit.py")
    parser.add_argument("--demo-args", default="", help="extra arguments of the demo case, e.g. '--top 3'")
    parser.add_argument("--progress", action="store_true")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    kind = "cuda" if device.type == "cuda" else "cpu"
    args.words = args.words or DEFAULT_WORDS[kind]
    from bench_fit import _option  # the same FIELD=VALUE parsing

    options = dict(_option(item) for item in args.set)
    corpus = load_corpus(args.corpus)
    rows = []
    for case in (args.cases or DEFAULT_CASES[kind]).split(","):
        rows.append(run_demo(args, device) if case == "demo" else run_model_case(case, args, device, dtype, corpus, options))
        Path(args.out).write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")  # kept if a later case fails
    for row in rows:
        print(_line(row))


def _line(row: dict) -> str:
    if row["case"] == "demo":
        return f"demo on {row['device_name']}: {row['seconds']:.0f} s"
    lines = [f"{row['case']} ({row['dtype']}, {row['parameters'] / 1e9:.2f}B parameters, weights {row['weights_gb']:.2f} GB, "
             f"{row['device_name']})"]
    for k, e in row["expand"].items():
        lines.append(f"  expand {k} words ({e['strategies']}): {e['seconds']:.1f} s, {_memory(e, row)}")
    d = row["diagnose"]
    lines.append(f"  diagnose {d['strategies']} strategies + bits per character: {d['seconds']:.1f} s, {_memory(d, row)}")
    return "\n".join(lines)


def _memory(facts: dict, row: dict) -> str:
    parts = [f"peak RSS {facts['peak_rss_mb'] / 1024:.2f} GB ({facts['peak_rss_mb'] / 1024 / row['weights_gb']:.2f}x weights)"]
    if facts.get("peak_cuda_mb") is not None:
        parts.append(f"peak CUDA {facts['peak_cuda_mb'] / 1024:.2f} GB (weights + "
                     f"{facts['peak_cuda_mb'] / 1024 - row['weights_gb']:.2f} GB)")
    return ", ".join(parts)


if __name__ == "__main__":
    main()
