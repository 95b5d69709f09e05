"""A saved folder tokenizes with AutoTokenizer exactly as its tokenizer.json does, for every model type a supported
family appears in (the model type decides the class in transformers 5), and loads in transformers 4.x.

Each folder holds a real tiny model of its type (AutoConfig.for_model), so config.json is the one transformers
writes for that type, as in the issue's Qwen 2 folder."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from tokenizers import Tokenizer
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

import vocab_expand as ve
from vocab_expand.serving import LOAD_FILE_AS_IS, probe_texts

from helpers import qwen_style

MODEL_TYPES = ["llama", "qwen2", "qwen3", "qwen2_moe", "qwen3_moe", "mistral", "gemma3_text", "gemma2", "gpt2", "phi3",
               "olmo2", "granite", "deepseek_v3"]
WORDS = ["Jehoshaphat", "Nebuchadnezzar", "Rehoboam"]
# One size for every architecture: the names each config reads (GPT-2's n_embd, MoE and MLA sizes) are given.
TINY = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
            head_dim=8, max_position_embeddings=64, n_embd=16, n_layer=1, n_head=2, n_positions=64, num_experts=2,
            num_experts_per_tok=1, moe_intermediate_size=16, shared_expert_intermediate_size=16, n_routed_experts=2,
            n_shared_experts=1, kv_lora_rank=8, q_lora_rank=None, qk_rope_head_dim=4, qk_nope_head_dim=4,
            v_head_dim=8, n_group=1, topk_group=1, first_k_dense_replace=0, bos_token_id=0, eos_token_id=0,
            pad_token_id=1)


def tiny_model(model_type: str, rows: int):
    config = AutoConfig.for_model(model_type, vocab_size=rows, **TINY)
    return AutoModelForCausalLM.from_config(config).eval()


def file_ids(folder: Path, texts: list[str]) -> list[list[int]]:
    reference = Tokenizer.from_file(str(folder / "tokenizer.json"))
    return [e.ids for e in reference.encode_batch(texts, add_special_tokens=False)]


def assert_autotokenizer_exact(folder: Path, words: list[str]) -> None:
    loaded = AutoTokenizer.from_pretrained(folder)
    texts = probe_texts(words)
    assert loaded(texts, add_special_tokens=False)["input_ids"] == file_ids(folder, texts)
    assert all(len(loaded(f" {w}", add_special_tokens=False)["input_ids"]) == 1 for w in words)


@pytest.fixture(scope="module")
def tokenizer():
    return qwen_style()


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_autotokenizer_tokenizes_as_the_folder_for_every_model_type(model_type, tokenizer, tmp_path):
    model = tiny_model(model_type, len(tokenizer))
    assert model.config.model_type == model_type
    expansion = ve.expand(model, tokenizer, WORDS, input_init="subword", output_init="mean")
    expansion.save(tmp_path / "out")
    assert json.loads((tmp_path / "out" / "config.json").read_text())["model_type"] == model_type
    assert_autotokenizer_exact(tmp_path / "out", WORDS)
    config = json.loads((tmp_path / "out" / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast"  # a class transformers 4.x knows
    saved = json.loads((tmp_path / "out" / "expansion.json").read_text())["serving"]["tokenizer"]
    assert saved["autotokenizer_exact"] and saved["load_as_is"] == (LOAD_FILE_AS_IS in config)


def test_qwen2_needs_the_entry_and_only_qwen2_gets_it(tokenizer, tmp_path):
    """The root cause, kept visible: without the entry transformers 5 builds Qwen2Tokenizer from vocab and merges
    and loses every new word; with it, the same class loads tokenizer.json as it is."""
    expansion = ve.expand(tiny_model("qwen2", len(tokenizer)), tokenizer, WORDS, input_init="subword",
                          output_init="mean")
    expansion.save(tmp_path / "out")
    path = tmp_path / "out" / "tokenizer_config.json"
    config = json.loads(path.read_text())
    assert config[LOAD_FILE_AS_IS] is True
    path.write_text(json.dumps({k: v for k, v in config.items() if k != LOAD_FILE_AS_IS}))
    rebuilt = AutoTokenizer.from_pretrained(tmp_path / "out")
    assert type(rebuilt).__name__ == "Qwen2Tokenizer"
    assert not any(i in expansion.new_token_ids for w in WORDS for i in rebuilt(f" {w}")["input_ids"])


def test_a_plain_resave_loses_the_entry_and_save_model_writes_it_back(tokenizer, tmp_path):
    """After fine-tuning, a Qwen 2 folder saved with save_pretrained (transformers 5) names Qwen2Tokenizer and
    loses the words again; ve.save_model keeps them, and the folder still passes the vLLM rules."""
    expansion = ve.expand(tiny_model("qwen2", len(tokenizer)), tokenizer, WORDS, input_init="subword",
                          output_init="mean")
    expansion.save(tmp_path / "out")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    loaded = AutoTokenizer.from_pretrained(tmp_path / "out")
    model.save_pretrained(tmp_path / "plain")
    loaded.save_pretrained(tmp_path / "plain")
    texts = probe_texts(WORDS)
    assert AutoTokenizer.from_pretrained(tmp_path / "plain")(texts, add_special_tokens=False)["input_ids"] != (
        file_ids(tmp_path / "plain", texts))
    serving = ve.save_model(model, loaded, tmp_path / "kept", tmp_path / "out")
    assert_autotokenizer_exact(tmp_path / "kept", WORDS)
    assert serving["vllm"]["ok"] and serving["tokenizer"]["load_as_is"]
    assert json.loads((tmp_path / "kept" / "expansion.json").read_text())["new_tokens"] == (
        expansion.report["new_tokens"])


@pytest.mark.slow
def test_real_qwen2_vocabulary_keeps_all_twelve_words(tmp_path):
    """The issue's case: a tiny Qwen2ForCausalLM with the real Qwen 2 vocabulary, 12 words (0/12 before)."""
    pytest.importorskip("quicktok")
    from helpers import real_qwen2

    tok = real_qwen2()
    words = ["Jehoshaphat", "Nebuchadnezzar", "Rehoboam", "Zerubbabel", "Mephibosheth", "Ahithophel", "Jehoiakim",
             "Abednego", "Shadrach", "Meshach", "Hazael", "Ishbosheth"]
    expansion = ve.expand(tiny_model("qwen2", len(tok)), tok, words, input_init="subword", output_init="mean")
    assert len(expansion.new_tokens) == 12
    expansion.save(tmp_path / "out")
    loaded = AutoTokenizer.from_pretrained(tmp_path / "out")
    assert sum(len(loaded(f" {w}", add_special_tokens=False)["input_ids"]) == 1 for w in words) == 12


# `make test` builds this venv (make install-tf4); another python with transformers 4.x can be named instead.
_VENV = Path(__file__).resolve().parents[1] / ".cache" / "engines" / "tf4" / "bin" / "python"
TRANSFORMERS4 = os.environ.get("VOCAB_EXPAND_TRANSFORMERS4_PYTHON") or (str(_VENV) if _VENV.is_file() else None)
PROBE = """
import json, sys
from transformers import AutoTokenizer
import transformers
tok = AutoTokenizer.from_pretrained(sys.argv[1])
ids = tok(json.loads(sys.argv[2]), add_special_tokens=False)["input_ids"]
print(json.dumps([transformers.__version__, type(tok).__name__, ids]))
"""


@pytest.mark.skipif(not TRANSFORMERS4, reason="no transformers 4.x: run `make install-tf4`, or set "
                    "VOCAB_EXPAND_TRANSFORMERS4_PYTHON to a python that has it")
@pytest.mark.parametrize("model_type", ["llama", "qwen2"])
def test_transformers4_loads_the_folder_with_the_same_ids(model_type, tokenizer, tmp_path):
    """llama.cpp's converter pins transformers 4.57.6: its AutoTokenizer must read the folder as 5.x does."""
    expansion = ve.expand(tiny_model(model_type, len(tokenizer)), tokenizer, WORDS, input_init="subword",
                          output_init="mean")
    expansion.save(tmp_path / "out")
    texts = probe_texts(WORDS)
    result = subprocess.run([TRANSFORMERS4, "-c", PROBE, str(tmp_path / "out"), json.dumps(texts)],
                            capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": ""})
    assert result.returncode == 0, result.stderr[-2000:]
    version, name, ids = json.loads(result.stdout.strip().splitlines()[-1])
    assert version.startswith("4.") and name == "PreTrainedTokenizerFast"
    assert ids == file_ids(tmp_path / "out", texts)
