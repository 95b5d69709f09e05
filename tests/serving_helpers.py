"""Tiny model folders of the Llama 3 and Qwen 2 layouts (real vocabularies from quicktok-v1, random weights, a
real config.json of the model type) for the llama.cpp tests and benchmarks/bench_serving.py; and whether the
real llama.cpp engines are installed.

Left out: the bundled models (loading.py gives their folders).
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from helpers import real_llama3, real_qwen2
from vocab_expand.engines import missing_engines

LAYOUT_FOLDERS = ("llama3", "qwen2")


def engines_missing_reason() -> str | None:
    """Why the llama.cpp tests cannot run here (None when they can): `make install-engines` installs both parts."""
    missing = missing_engines()
    return f"not installed: {' and '.join(missing)}; run make install-engines" if missing else None


def layout_folder(layout: str, path: Path, seed: int = 0) -> Path:
    """Save a tiny causal LM with the real ``layout`` tokenizer ("llama3" or "qwen2") into ``path``."""
    tokenizer = real_llama3() if layout == "llama3" else real_qwen2()
    torch.manual_seed(seed)
    common = dict(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                  num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256,
                  tie_word_embeddings=True, eos_token_id=tokenizer.eos_token_id)
    model_class, config_class = (LlamaForCausalLM, LlamaConfig) if layout == "llama3" else (Qwen2ForCausalLM, Qwen2Config)
    model = model_class(config_class(**common)).eval()
    with torch.no_grad():  # spread the logits so that greedy choices are far from ties
        model.get_input_embeddings().weight.normal_(0, 1.0)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
