"""The README's examples run: every ```python block is executed, and every `vocab-expand ...` command line is
parsed by the real parser (so a renamed flag or an unexported name fails here, not for a reader).

The blocks name the bundled SmolLM2 and the kjv corpus; here load_model and load_corpus return a tiny local
model and corpus instead (and compare runs a few steps), so the suite needs no network and takes seconds.
What is checked is the README's code as written: the names it imports and the calls and attributes it uses.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import torch

import vocab_expand as ve
from vocab_expand import STRATEGIES
from vocab_expand.cli import build_parser
from vocab_expand.corpus import Corpus

from helpers import TINY_TEXT, make_model, train_byte_level_bpe, wrap

README = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
BLOCKS = re.findall(r"```python\n(.*?)```", README, re.S)
TEXT = [f"And Jehoshaphat said unto the prophets of Israel, {i} times, go up to Ramothgilead." for i in range(150)]
CORPUS = Corpus("tiny-kjv", train=TEXT + TINY_TEXT, heldout=TEXT[:20])
FAST = dict(steps=4, eval_every=2, batch_size=4, seq_len=16, eval_tokens=200, warmup_steps=1)


def commands() -> list[str]:
    """Every `vocab-expand ...` command of the README, backslash continuations joined."""
    joined = re.sub(r"\\\n\s*", " ", README)
    return [line.strip().split("  #")[0] for line in joined.splitlines() if line.strip().startswith("vocab-expand ")]


@pytest.mark.parametrize("command", commands())
def test_readme_command_lines_parse(command):
    args = build_parser().parse_args(shlex.split(command)[1:])
    assert callable(args.run)


@pytest.fixture
def tiny_world(tmp_path, monkeypatch):
    """load_model / load_corpus / compare as the README calls them, on a tiny model and corpus."""
    import vocab_expand.experiments as experiments
    import vocab_expand.loading as loading

    tokenizer = wrap(train_byte_level_bpe())
    model = make_model("tied", len(tokenizer), seed=1)
    with torch.no_grad():  # a shared direction in the final states, as real models have (the twin needs one)
        model.model.norm.weight.add_(3.0)
        model.get_input_embeddings().weight.add_(0.5)

    def load_model(name="smollm2-135m", **kwargs):
        return model, tokenizer

    def load_corpus(name="kjv", **kwargs):
        return CORPUS

    real_compare = ve.compare
    # vocab_expand's names first: its lazy __getattr__ would otherwise read (and keep, after the test) the
    # already patched loading.load_model as the "original"
    monkeypatch.setattr(ve, "load_model", load_model)
    monkeypatch.setattr(ve, "load_corpus", load_corpus)
    monkeypatch.setattr(loading, "load_model", load_model)
    monkeypatch.setattr(experiments, "load_corpus", load_corpus)
    monkeypatch.setattr(ve, "compare", lambda *a, **k: real_compare(*a, **{**k, **FAST, "progress": False}))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_readme_python_api_block_runs(tiny_world):
    namespace: dict = {}
    block = next(b for b in BLOCKS if "ve.mine(" in b)
    exec(compile(block, "README.md: Python", "exec"), namespace)
    assert (tiny_world / "OUT" / "config.json").is_file() and (tiny_world / "REPORT" / "report.md").is_file()
    assert (tiny_world / "RUNS" / "report.md").is_file()
    assert namespace["words"] and namespace["result"].new_tokens


def test_readme_lora_block_runs(tiny_world):
    pytest.importorskip("peft")
    block = next(b for b in BLOCKS if "lora_config" in b)
    namespace = {"words": ["Jehoshaphat", "Ramothgilead"], "corpus": CORPUS}
    namespace["model"], namespace["tokenizer"] = ve.load_model("smollm2-135m")
    exec(compile(block, "README.md: LoRA", "exec"), namespace)
    assert (tiny_world / "OUT" / "config.json").is_file()


def test_readme_own_strategy_block_runs(tiny_world):
    block = next(b for b in BLOCKS if "register_strategy" in b)
    try:
        exec(compile(block, "README.md: your own strategy", "exec"), {})
        model, tokenizer = ve.load_model("smollm2-135m")
        options = STRATEGIES["mean_state"].options_class(scale=0.5)
        result = ve.expand(model, tokenizer, ["Jehoshaphat"], corpus=CORPUS, output_init="mean_state",
                           strategy_options={"mean_state": options})
        assert result.report["output_strategy"] == "mean_state"
    finally:
        STRATEGIES.pop("mean_state", None)


def test_readme_checkpoint_block_runs(tiny_world):
    block = next(b for b in BLOCKS if "expand_checkpoint" in b)
    model, tokenizer = ve.load_model("smollm2-135m")
    ve.expand(model, tokenizer, ["Jehoshaphat"], input_init="subword", output_init="mean").save("OUT/")
    namespace: dict = {}
    exec(compile(block, "README.md: checkpoint", "exec"), namespace)
    assert namespace["more"].report["method"] == "checkpoint" and namespace["more"].new_tokens
    assert (tiny_world / "OUT-more" / "config.json").is_file()


def test_readme_device_block_runs(tmp_path, monkeypatch):
    """The placement example with the real load_model, on a tiny folder in place of the bundled model."""
    import vocab_expand.loading as loading

    tokenizer = wrap(train_byte_level_bpe())
    make_model("tied", len(tokenizer)).save_pretrained(tmp_path / "tiny")
    tokenizer.save_pretrained(tmp_path / "tiny")
    real_resolve = loading.resolve
    monkeypatch.setattr(loading, "resolve", lambda name: real_resolve(tmp_path / "tiny"))
    block = next(b for b in BLOCKS if 'device="auto"' in b)
    namespace: dict = {}
    exec(compile(block, "README.md: device", "exec"), namespace)
    expected = torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float32
    assert namespace["model"].get_input_embeddings().weight.dtype == expected


def test_readme_fine_tune_merge_serve_block_runs(tiny_world, monkeypatch):
    """The "Fine-tune, merge, serve" block as written, with SFTTrainer cut to 2 steps on the CPU: expand
    (portable), LoRA with SFTTrainer, merge, save, export and check in real llama.cpp."""
    from vocab_expand.engines import missing_engines

    if missing_engines():
        pytest.skip(f"llama.cpp is not installed ({'; '.join(missing_engines())}): run make install-engines")
    trl = pytest.importorskip("trl")
    pytest.importorskip("peft")
    from serving_helpers import layout_folder
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # llama.cpp's converter knows real pre-tokenizers only: a tiny Llama 3 model with the real vocabulary
    folder = layout_folder("llama3", tiny_world / "llama3")
    monkeypatch.setattr(ve, "load_model", lambda *a, **k: (AutoModelForCausalLM.from_pretrained(folder),
                                                            AutoTokenizer.from_pretrained(folder)))
    real_config = trl.SFTConfig
    monkeypatch.setattr(trl, "SFTConfig", lambda **kw: real_config(**{**kw, "max_steps": 2, "use_cpu": True,
                                                                        "save_strategy": "no"}))
    block = next(b for b in BLOCKS if "ve.save_model(" in b)
    namespace: dict = {}
    try:
        exec(compile(block, "README.md: fine-tune, merge, serve", "exec"), namespace)
    finally:  # the trainer sets Accelerate's process-wide state (mixed precision); later tests build their own
        from accelerate.state import AcceleratorState

        AcceleratorState._reset_state(reset_partial_state=True)
    assert namespace["serving"]["vllm"]["ok"] and namespace["serving"]["tokenizer"]["autotokenizer_exact"]
    assert (tiny_world / "MERGED" / "expansion.json").is_file()
    loaded = AutoTokenizer.from_pretrained(tiny_world / "MERGED")
    assert all(len(loaded(f" {w}", add_special_tokens=False)["input_ids"]) == 1
               for w in ("Jehoshaphat", "Nebuchadnezzar"))
    check = namespace["gguf"].check  # step 4 ran real llama.cpp on the merged folder
    assert check["exact"] and check["new_words_one_token"]["count"] == 2
