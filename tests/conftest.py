"""Shared fixtures: the tiny tokenizer and models of every layout (built by helpers.py), and the bundled
real model and corpus, loaded once per session.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers import LAYOUTS, SPARE_ROWS, make_model, train_byte_level_bpe, wrap
from transformers import PreTrainedTokenizerFast


@pytest.fixture(scope="session")
def tiny_tokenizer() -> PreTrainedTokenizerFast:
    return wrap(train_byte_level_bpe())


@pytest.fixture
def model_dir(tmp_path, tiny_tokenizer) -> Path:
    """A tiny tied model saved as a plain transformers folder (what --model FOLDER reads)."""
    path = tmp_path / "tiny-model"
    make_model("tied", len(tiny_tokenizer)).save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return path


@pytest.fixture(params=LAYOUTS)
def tiny(request, tiny_tokenizer):
    """(layout, model, tokenizer) for every layout; 'padded' has SPARE_ROWS rows beyond the tokenizer."""
    layout = request.param
    rows = len(tiny_tokenizer) + (SPARE_ROWS if layout == "padded" else 0)
    model = make_model("tied" if layout == "padded" else layout, rows)
    return layout, model, tiny_tokenizer


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory) -> Path:
    """Converted bundled models: $VOCAB_EXPAND_CACHE when set (reused across runs), else a session folder."""
    existing = os.environ.get("VOCAB_EXPAND_CACHE")
    path = Path(existing) if existing else tmp_path_factory.mktemp("vocab-expand-cache")
    os.environ["VOCAB_EXPAND_CACHE"] = str(path)
    return path


@pytest.fixture(scope="session")
def smollm2(model_cache):
    """The bundled SmolLM2-135M (model, tokenizer), loaded once per session. Tests must not modify it."""
    from vocab_expand import load_model

    return load_model("smollm2-135m")


@pytest.fixture(scope="session")
def kjv():
    from vocab_expand import load_corpus

    return load_corpus("kjv")
