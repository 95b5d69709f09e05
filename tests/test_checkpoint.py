"""expand_checkpoint: a safetensors folder expanded on disk without building the model gives, bit for bit, the
matrices that expand() + save gives; every other tensor is unchanged; the input folder is never touched; a
data-driven strategy, an existing output or an output inside the input is a one-line error that writes nothing."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from vocab_expand import InvalidInputError, NothingAddedError, OutputExistsError, expand, expand_checkpoint
from vocab_expand.cli import main

from helpers import SPARE_ROWS, make_model

WORDS = ["Jehoshaphat", "Nebuchadnezzar", "prophets"]
EMBED, HEAD = "model.embed_tokens.weight", "lm_head.weight"
# (layout, input/output strategies, storage, extra options): every static pair on tied and untied models, in
# float32, bfloat16 and sharded folders, plus untie, padding and spare rows.
CASES = [
    ("tied", "mean/mean", "float32", {}),
    ("untied", "mean/mean", "sharded", {}),
    ("tied", "subword/mean", "sharded", {}),
    ("untied", "subword/mean", "bfloat16", {}),
    ("tied", "hf_default/hf_default", "bfloat16", {}),
    ("untied", "hf_default/hf_default", "float32", {}),
    ("tied", "subword/mean", "bfloat16", {"tie_policy": "untie", "pad_to_multiple_of": 64}),
    ("padded", "mean_cov/random", "sharded", {"tie_policy": "untie", "seed": 3}),
]


def save_model(path: Path, layout: str, tokenizer, storage: str = "float32") -> Path:
    """A tiny Llama folder: one float32 or bfloat16 file, or float32 in several shards."""
    rows = len(tokenizer) + (SPARE_ROWS if layout == "padded" else 0)
    dtype = torch.bfloat16 if storage == "bfloat16" else torch.float32
    model = make_model("tied" if layout == "padded" else layout, rows, dtype=dtype)
    model.save_pretrained(path, **({"max_shard_size": "20KB"} if storage == "sharded" else {}))
    tokenizer.save_pretrained(path)
    return path


def checksums(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def tensors_of(folder: Path) -> dict[str, torch.Tensor]:
    found: dict[str, torch.Tensor] = {}
    for path in sorted(folder.glob("*.safetensors")):
        found.update(load_file(path))
    return found


@contextlib.contextmanager
def never_built():
    """Within it, building or loading any transformers model raises."""

    def refuse(*args, **kwargs):
        raise AssertionError("the model was built")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(AutoModelForCausalLM, "from_pretrained", refuse)
        patch.setattr(transformers.PreTrainedModel, "__init__", refuse)
        yield


@pytest.mark.parametrize("layout, pair, storage, options", CASES, ids=[f"{c[0]}-{c[1]}-{c[2]}" for c in CASES])
def test_matrices_equal_the_in_memory_expansion_and_the_rest_is_unchanged(layout, pair, storage, options,
                                                                          tiny_tokenizer, tmp_path):
    source = save_model(tmp_path / "model", layout, tiny_tokenizer, storage)
    before = checksums(source)
    input_init, output_init = pair.split("/")
    with never_built():
        result = expand_checkpoint(source, WORDS, tmp_path / "out", input_init=input_init, output_init=output_init,
                                   **options)
    dtype = torch.bfloat16 if storage == "bfloat16" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype)
    memory = expand(model, AutoTokenizer.from_pretrained(source), WORDS, input_init=input_init,
                    output_init=output_init, **options)
    memory.save(tmp_path / "memory")

    got, want, old = tensors_of(tmp_path / "out"), tensors_of(tmp_path / "memory"), tensors_of(source)
    assert set(got) == set(want)
    for name, tensor in got.items():
        assert tensor.dtype == dtype and torch.equal(tensor, want[name]), name
        if name not in (EMBED, HEAD):
            assert torch.equal(tensor, old[name]), name
    assert checksums(source) == before  # the input folder is byte-identical

    report, expected = result.report, memory.report
    assert report["method"] == "checkpoint" and set(expected) - {"method"} <= set(report)
    for key in set(expected) - {"method", "timings", "peak_memory"}:
        assert report[key] == expected[key], key
    assert report["peak_memory"]["rss_mb"] > 0
    assert json.loads((tmp_path / "out" / "expansion.json").read_text()) == json.loads(json.dumps(report, default=str))

    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    tok = AutoTokenizer.from_pretrained(tmp_path / "out")
    rows = loaded.get_input_embeddings().weight.shape[0]
    assert loaded.config.vocab_size == rows == report["rows_after"] >= len(tok) == len(tiny_tokenizer) + len(WORDS)
    shared = loaded.get_input_embeddings().weight.data_ptr() == loaded.get_output_embeddings().weight.data_ptr()
    assert shared == report["tied"] == (layout != "untied" and options.get("tie_policy") != "untie")
    for entry in report["new_tokens"]:
        assert tok(" " + entry["word"], add_special_tokens=False).input_ids == [entry["id"]]


def test_sharded_folder_links_the_shards_it_does_not_change(tiny_tokenizer, tmp_path):
    source = save_model(tmp_path / "model", "untied", tiny_tokenizer, "sharded")
    result = expand_checkpoint(source, WORDS, tmp_path / "out")
    files = result.report["files"]
    index = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())
    assert len(files["rewritten"]) in (1, 2) and files["linked"], files
    assert set(files["rewritten"]) == {index["weight_map"][EMBED], index["weight_map"][HEAD]}
    for shard in files["linked"]:
        assert os.stat(tmp_path / "out" / shard).st_ino == os.stat(source / shard).st_ino
    assert "generation_config.json" in files["copied"] and (tmp_path / "out" / "generation_config.json").is_file()
    stored = sum(t.numel() * t.element_size() for t in tensors_of(tmp_path / "out").values())
    original = json.loads((source / "model.safetensors.index.json").read_text())["metadata"]["total_size"]
    grown = (result.report["rows_after"] - result.report["rows_before"]) * 16 * 4 * 2  # two float32 matrices, d = 16
    assert index["metadata"]["total_size"] == original + grown
    assert stored - sum(t.numel() * t.element_size() for t in tensors_of(source).values()) == grown
    if "total_parameters" in index["metadata"]:  # transformers 5 counts the stored elements too
        assert index["metadata"]["total_parameters"] == sum(t.numel() for t in tensors_of(tmp_path / "out").values())
    copied = expand_checkpoint(source, WORDS, tmp_path / "copied", link=False).report["files"]
    assert not copied["linked"] and set(files["linked"]) <= set(copied["copied"])


def test_a_data_driven_strategy_or_text_is_refused_and_writes_nothing(tiny_tokenizer, tmp_path):
    source = save_model(tmp_path / "model", "tied", tiny_tokenizer)
    for options in ({"output_init": "fit"}, {"input_init": "distill", "output_init": "mean"}, {"corpus": ["text"]}):
        with pytest.raises(InvalidInputError) as caught:
            expand_checkpoint(source, WORDS, tmp_path / "out", **options)
        assert "\n" not in str(caught.value) and "expand" in str(caught.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no output, no temporary folder


def test_outputs_are_never_overwritten_or_inside_the_input(tiny_tokenizer, tmp_path):
    source = save_model(tmp_path / "model", "untied", tiny_tokenizer)
    before = checksums(source)
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    with pytest.raises(OutputExistsError):
        expand_checkpoint(source, WORDS, out)
    assert (out / "mine.txt").read_text() == "keep me"
    expand_checkpoint(source, WORDS, out, force=True)
    assert not (out / "mine.txt").exists() and (out / "config.json").is_file()
    with pytest.raises(InvalidInputError, match="inside the input"):
        expand_checkpoint(source, WORDS, source / "sub", force=True)
    with pytest.raises(InvalidInputError):
        expand_checkpoint(source, WORDS, source, force=True)
    with pytest.raises(NothingAddedError):
        expand_checkpoint(source, ["the"], tmp_path / "empty")
    assert checksums(source) == before and not (tmp_path / "empty").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folders left


def test_unknown_tensor_names_are_a_clear_error(tiny_tokenizer, tmp_path):
    source = save_model(tmp_path / "model", "untied", tiny_tokenizer)
    renamed = {name.replace("model.", "body."): t for name, t in load_file(source / "model.safetensors").items()}
    save_file(renamed, source / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(InvalidInputError, match="found no input embedding.*load_model"):
        expand_checkpoint(source, WORDS, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_cli_expands_a_folder_without_loading_it_unless_asked(tiny_tokenizer, tmp_path, capsys):
    source = save_model(tmp_path / "model", "tied", tiny_tokenizer)
    args = ["expand", "--model", str(source), "--word", "Jehoshaphat", "--word", "prophets"]
    with never_built():
        assert main([*args, "-o", str(tmp_path / "out")]) == 0, capsys.readouterr().err
    lines = capsys.readouterr().out.strip().splitlines()
    report = json.loads((tmp_path / "out" / "expansion.json").read_text())
    assert lines[0].startswith("added 2 tokens (mean input rows, mean output rows)")  # tied: the output strategy
    assert any(line.startswith("method: checkpoint") for line in lines) and report["method"] == "checkpoint"
    assert lines[-1] == (f"saved to {tmp_path / 'out'}; parameters {report['parameters_before']:,} -> "
                         f"{report['parameters_after']:,} (+{report['parameters_added']:,}, tied)")
    assert main([*args, "--load-model", "-o", str(tmp_path / "memory")]) == 0
    printed = capsys.readouterr().out
    assert "method: model" in printed and printed.strip().splitlines()[-1].endswith(lines[-1].split("; ")[1])
    got, want = tensors_of(tmp_path / "out"), tensors_of(tmp_path / "memory")
    assert set(got) == set(want) and all(torch.equal(got[n], want[n]) for n in got)
    assert main([*args, "--output-init", "fit", "-o", str(tmp_path / "fit")]) == 2  # no text: the in-memory error
    assert "corpus" in capsys.readouterr().err and not (tmp_path / "fit").exists()
