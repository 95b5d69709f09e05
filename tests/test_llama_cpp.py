"""llama.cpp: portable merge chains (families/merge_chains.py), `export` and its check in the real engine.

The engine tests run real llama.cpp (`make install-engines`, which `make test` runs first) and are skipped, with
the reason, only where it is not installed. `export_and_check(folder, tmp_path)` is the hook for longer
pipelines (expand, LoRA, merge, export): give it any saved folder.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import TINY_TEXT, train_byte_level_bpe, train_sentencepiece_bpe, unigram_style, wrap
from serving_helpers import engines_missing_reason, layout_folder

import vocab_expand as ve
from vocab_expand.errors import EngineError, InvalidInputError, MissingPackageError, OutputExistsError
from vocab_expand.config import ExpandConfig
from vocab_expand.expansion import plan_tokens
from vocab_expand.families import detect_family
from vocab_expand.families.merge_chains import _caterpillar, build_chains, lexicon_pairs, unreached_by_merges
from vocab_expand.tokenization import tokenizer_spec

WORDS = ["Jehoshaphat", "Nebuchadnezzar", "Rehoboam", "Zerubbabel"]
needs_engines = pytest.mark.skipif(engines_missing_reason() is not None, reason=engines_missing_reason() or "")


def test_caterpillar_grows_the_cherry_right_then_left():
    merges = [(a, b) for a, b, _, _ in _caterpillar(["a", "b", "c", "d"], 1)]
    assert merges == [("b", "c"), ("bc", "d"), ("a", "bcd")]


@pytest.mark.parametrize("build", [train_byte_level_bpe, train_sentencepiece_bpe], ids=["byte_level", "sentencepiece"])
def test_portable_words_are_built_by_merges_alone_and_coarsen_other_text(build):
    tok = wrap(build())
    default = plan_tokens(tok, WORDS, ExpandConfig())
    portable = plan_tokens(tok, WORDS, ExpandConfig(portable=True), lexicon=TINY_TEXT)
    words = [e.token for e in portable.entries if e.form != "piece"]
    # every word whose characters the vocabulary holds (the tiny SentencePiece one lacks "Z": byte fallback)
    assert len(words) == len(default.entries) - (build is train_sentencepiece_bpe) >= 3
    assert any(e.form == "piece" for e in portable.entries)
    assert unreached_by_merges(tokenizer_spec(default.tokenizer), words)  # the default needs ignore_merges
    assert unreached_by_merges(tokenizer_spec(portable.tokenizer), words) == []
    for text in TINY_TEXT + [f"So {w} and {w}s spoke." for w in WORDS]:
        old = tok.tokenize(text)
        new = portable.tokenizer.tokenize(text)
        assert portable.tokenizer.decode(portable.tokenizer.encode(text, add_special_tokens=False)) == text
        assert "".join(old) == "".join(new) and _is_coarsening(old, new)
    for entry, token_id in zip(portable.entries, portable.new_token_ids):
        if entry.form != "piece":
            assert token_id in portable.tokenizer.encode(f"They saw {entry.word} there.", add_special_tokens=False)


def _is_coarsening(old: list[str], new: list[str]) -> bool:
    """Every boundary of ``new`` is a boundary of ``old``."""
    def cuts(tokens: list[str]) -> set[int]:
        out, pos = set(), 0
        for t in tokens:
            pos += len(t)
            out.add(pos)
        return out
    return cuts(new) <= cuts(old)


def test_the_cherry_is_the_pair_the_lexicon_holds_least():
    family = detect_family(tokenizer_spec(wrap(train_byte_level_bpe())))
    entry = family.entry_for("Jehoshaphat", "mid")
    pieces = [t.value for t in family.backend.model.tokenize(entry.token)]
    # a lexicon whose words hold every adjacent pair of the word's pieces but the second, 3 times each
    lexicon = [" " + "".join(pieces[:i + 2]).lstrip("Ġ") + "q" for i in range(len(pieces) - 1) if i != 1] * 3
    pairs = lexicon_pairs(family, lexicon, {entry.token})
    chains = build_chains(family, [entry], pairs)
    cherry = chains.cherries[entry.token]
    assert pairs[cherry] == min(pairs[p] for p in zip(pieces, pieces[1:]))
    assert any(pairs[p] > 0 for p in zip(pieces, pieces[1:]))
    assert len(chains.merges) == len(pieces) - 1 and len(chains.pieces) == len(pieces) - 2


def test_portable_is_refused_for_added_tokens_and_unigram():
    with pytest.raises(InvalidInputError, match="portable"):
        ExpandConfig(portable=True, kind="added")
    with pytest.raises(ve.UnsupportedTokenizerError, match="BPE"):
        plan_tokens(unigram_style(), ["offering"], ExpandConfig(portable=True))


def test_export_refuses_bad_input_before_any_work(tmp_path, model_dir):
    with pytest.raises(ve.MissingResourceError, match="config.json"):
        ve.export(tmp_path, tmp_path / "a.gguf")
    with pytest.raises(InvalidInputError, match="outtype"):
        ve.export(model_dir, tmp_path / "a.gguf", outtype="q4_k")
    (tmp_path / "b.gguf").write_text("mine")
    with pytest.raises(OutputExistsError):
        ve.export(model_dir, tmp_path / "b.gguf")
    with pytest.raises(InvalidInputError):
        ve.export(model_dir, model_dir / "c.gguf")  # never inside the input folder
    assert (tmp_path / "b.gguf").read_text() == "mine"


def test_missing_engines_say_how_to_install(tmp_path, model_dir, monkeypatch):
    monkeypatch.setenv("VOCAB_EXPAND_ENGINES", str(tmp_path / "none"))
    with pytest.raises(MissingPackageError, match="make install-engines"):
        ve.export(model_dir, tmp_path / "a.gguf")
    assert not (tmp_path / "a.gguf").exists()


def export_and_check(folder: Path, out: Path, **options) -> dict:
    """Export ``folder`` to ``out``/model.gguf (f32) and check it in real llama.cpp; the check's figures."""
    result = ve.export(folder, out / "model.gguf", outtype="f32", check=True, **options)
    assert json.loads((out / "model.gguf.check.json").read_text())["exact"] is True
    return result.check


@pytest.fixture(scope="module")
def layout_base(tmp_path_factory):
    """layout name -> its tiny model folder, built once per module (the real vocabularies take seconds)."""
    built: dict[str, Path] = {}

    def get(layout: str) -> Path:
        if layout not in built:
            built[layout] = layout_folder(layout, tmp_path_factory.mktemp(layout) / layout)
        return built[layout]
    return get


def _expanded_layout(base: Path, tmp_path: Path, portable: bool) -> Path:
    out = tmp_path / f"{base.name}-{'portable' if portable else 'default'}"
    ve.expand_checkpoint(base, WORDS, out, portable=portable)
    return out


@needs_engines
@pytest.mark.parametrize("layout,portable", [("llama3", False), ("qwen2", True)])
def test_llama_cpp_reproduces_the_folder(layout, portable, tmp_path, layout_base):
    """Llama 3 converts as llama-bpe, whose runtime applies ignore_merges: the default entries survive. Qwen 2
    converts as qwen2 (merges only): the portable chains make every word one token there."""
    folder = _expanded_layout(layout_base(layout), tmp_path, portable)
    result = ve.export(folder, tmp_path / "model.gguf", outtype="f32", check=True, corpus=None)
    check = result.check
    assert result.warning is None and json.loads((tmp_path / "model.gguf.check.json").read_text())["exact"]
    assert check["new_words_one_token"] == {"count": len(WORDS), "total": len(WORDS), "not_one_token": []}
    assert check["texts"]["identical"] == check["texts"]["total"] > len(WORDS)
    assert check["greedy"]["agree"] == check["greedy"]["total"] == 3
    saved = json.loads((folder / "expansion.json").read_text())["serving"]["llama_cpp"]
    assert saved["exact"] == (True if portable else "llama3_family_only")
    assert check["pre_tokenizer"] == {"llama3": "llama-bpe", "qwen2": "qwen2"}[layout]


@needs_engines
def test_a_diverging_engine_fails_in_one_line_after_writing_the_figures(tmp_path, layout_base):
    folder = _expanded_layout(layout_base("qwen2"), tmp_path, portable=False)
    plain = ve.export(folder, tmp_path / "plain.gguf")  # without --check: the known loss is one line too
    assert "4 new word(s)" in plain.warning and "'qwen2' pre-tokenizer" in plain.warning
    with pytest.raises(EngineError, match="0/4 new words are one token.*--portable") as err:
        ve.export(folder, tmp_path / "q.gguf", outtype="f32", check=True, corpus=None)  # (README's block: f16)
    assert "\n" not in str(err.value)
    check = json.loads((tmp_path / "q.gguf.check.json").read_text())
    assert check["exact"] is False and check["new_words_one_token"]["count"] == 0
    assert check["greedy"]["agree"] == 3  # the weights are right: only the tokenizer differs
    assert (tmp_path / "q.gguf").stat().st_size > 0


@needs_engines
@pytest.mark.slow
def test_bundled_smollm2_expand_export_check(tmp_path, smollm2, kjv):
    """The whole path on the real model: expand portable with the KJV's train split as the chains' lexicon, LoRA
    plus the new rows (one optimizer step), merge, save, export, and check in llama.cpp against the held-out split
    and the probes."""
    import torch
    from peft import get_peft_model

    folder, merged_folder = tmp_path / "expanded", tmp_path / "merged"
    model, tokenizer = smollm2
    expansion = ve.expand(model, tokenizer, WORDS[:3], corpus=kjv, portable=True, input_init="subword",
                          output_init="mean")
    expansion.save(folder)
    before = expansion.model.get_input_embeddings().weight.detach().clone()
    peft_model = get_peft_model(expansion.model, ve.lora_config(folder, r=4))
    batch = expansion.tokenizer([f"And {w} said unto the king" for w in WORDS[:3]], return_tensors="pt")
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-3)
    peft_model(**batch, labels=batch["input_ids"]).loss.backward()
    optimizer.step()
    merged = peft_model.merge_and_unload()
    after = merged.get_input_embeddings().weight.detach()
    new = expansion.new_token_ids
    assert torch.equal(after[: min(new)], before[: min(new)]) and not torch.equal(after[new], before[new])
    ve.save_model(merged, expansion.tokenizer, merged_folder, folder)
    check = export_and_check(merged_folder, tmp_path, corpus=kjv, max_texts=150)
    assert check["new_words_one_token"]["count"] == 3
    assert check["texts"]["identical"] == check["texts"]["total"] == 150 + 4


def test_the_converter_reads_tokenizer_json_when_a_stale_tokenizer_model_is_there(tmp_path, model_dir):
    """tokenizer.model lacks the new pieces: the converter must not see it once expansion.json lists new tokens."""
    from vocab_expand.gguf_export import converter_view

    (model_dir / "tokenizer.model").write_bytes(b"stale")
    with converter_view(model_dir) as folder:
        assert folder == model_dir  # nothing was added: the folder is read as it is
    (model_dir / "expansion.json").write_text(json.dumps({"new_tokens": [{"id": 5, "token": "Ġx", "text": " x"}]}))
    with converter_view(model_dir) as folder:
        assert folder.name == model_dir.name and not (folder / "tokenizer.model").exists()
        assert sorted(p.name for p in folder.iterdir()) == sorted(p.name for p in model_dir.iterdir()
                                                                    if p.name != "tokenizer.model")
        assert (folder / "config.json").read_text() == (model_dir / "config.json").read_text()
    assert not folder.exists() and (model_dir / "tokenizer.model").exists()


def test_cli_export_errors_are_one_line(tmp_path, model_dir, capsys, monkeypatch):
    from vocab_expand.cli import main

    (tmp_path / "taken.gguf").write_text("mine")
    assert main(["export", str(model_dir), "-o", str(tmp_path / "taken.gguf")]) == 2
    monkeypatch.setenv("VOCAB_EXPAND_ENGINES", str(tmp_path / "none"))
    assert main(["export", str(model_dir), "-o", str(tmp_path / "new.gguf"), "--check"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "already exists" in err[0] and "make install-engines" in err[1]


def test_an_engine_failure_is_told_by_its_last_exception_line():
    from vocab_expand.engines import last_error

    log = "INFO:hf-to-gguf:Loading model\nTraceback (most recent call last):\n  File x\n" \
          "NotImplementedError: BPE pre-tokenizer was not recognized - update get_vocab_base_pre()\n\n"
    assert last_error(log) == "NotImplementedError: BPE pre-tokenizer was not recognized - update get_vocab_base_pre()"
    assert last_error("only a line\n") == "only a line" and last_error("") == "no output"


def test_gguf_string_reads_the_header_as_gguf_py_does(tmp_path):
    """The header reader stops at its key; on every kind of field before it, it agrees with gguf-py's GGUFReader."""
    import gguf
    import numpy as np

    from vocab_expand.gguf_export import _gguf_string_slow, gguf_string

    path = tmp_path / "h.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_uint32("a.u32", 7)
    writer.add_float64("a.f64", 0.5)
    writer.add_bool("a.bool", True)
    writer.add_array("a.tokens", ["Ġx", "", "ÿ" * 300] * 50)
    writer.add_array("a.scores", [0.5, 1.5] * 40)
    writer.add_string("tokenizer.ggml.pre", "qwen2")
    writer.add_array("a.nested", [[1, 2], [3]])
    writer.add_string("last", "é" * 5)
    writer.add_tensor("w", np.zeros((2, 2), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    for key in ("tokenizer.ggml.pre", "last", "general.architecture", "missing"):
        assert gguf_string(path, key) == _gguf_string_slow(path, key)
    assert gguf_string(path, "tokenizer.ggml.pre") == "qwen2" and gguf_string(path, "a.u32") is None
