"""What a saved model folder must satisfy for the programs that load and serve it, checked and recorded.

Two parts, both run by every save (`Expansion.save`, `expand_checkpoint`, `save_model`):

1. The tokenizer files. `tokenizer_config.json` names `PreTrainedTokenizerFast`, the one generic class both
   transformers 4.x (which llama.cpp's converter pins) and 5.x know; transformers 5 saves its own name for it,
   `TokenizersBackend`, which 4.x refuses. transformers 5's AutoTokenizer picks the tokenizer class from the
   model type for some types whatever tokenizer_config.json says (`MODELS_WITH_INCORRECT_HUB_TOKENIZER_CLASS`
   in models/auto/tokenization_auto.py, qwen2 since transformers PR #44255); for qwen2 that is
   `Qwen2Tokenizer`, whose `__init__` rebuilds the backend from vocab and merges
   (`TokenizersBackend.convert_to_native_format` hands tokenizer.json as a file only to classes without their
   own `__init__`), dropping `ignore_merges`, which is what makes the new entries reachable. Where that happens
   (asked of transformers itself, on sentences with every new word), `"trust_remote_code": true` is written into
   tokenizer_config.json: it is the one switch of `convert_to_native_format` that passes tokenizer.json through
   unchanged (the class then loads the file as it is). It enables no remote code (AutoTokenizer reads that flag
   from its caller only; the folder holds no code), and transformers 4.x keeps it as an unused init argument.
   A re-save by transformers 5 of the loaded tokenizer drops it again: save with `save_model`, which writes it
   back. (Merge chains, new words reachable by merges alone, would survive such classes without the entry.)
2. The matrices, as vLLM reads them: it sizes the logits by the config's (text config's) `vocab_size`, samples
   over every row (rows past the tokenizer too), and takes max(largest token id + 1, vocab_size) as the
   vocabulary. So: vocab_size equals the rows of the input matrix and the head; rows past the tokenizer
   (padding) have the mean output row (rows/layout.py writes it: by the Hewitt bound each takes at most 1/n of the
   probability) or a bias <= -1e4, never zeros or trained rows, which can take the mode on models whose logits
   are all negative; and every new id is a row and inside that vocabulary.

The result goes into expansion.json as "serving"; problems are one line each.

Left out: the GGUF route (export.py); running vLLM (not installable here, so its rules are checked statically);
weights in formats other than safetensors (the matrix checks are skipped and say so).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor

from . import stats
from .handoff import module_name
from .rows.layout import embedding_layout
from .tokenization import GENERIC_TOKENIZER_CLASS, PROBES

# The tokenizer_config.json entry that makes a class with its own __init__ load tokenizer.json unchanged (above).
LOAD_FILE_AS_IS = "trust_remote_code"
# (input matrix, output matrix, output bias or None); a tied model's output matrix is its input matrix.
Matrices = tuple[Tensor, Tensor, "Tensor | None"]
# A bias at or below this keeps a padding row's logit out of reach of any sampling.
NEVER_SAMPLED_BIAS = -1e4
# Sentences without new words, compared too (spaces, digits, code, non-Latin text).
PLAIN_TEXTS = ("And it came to pass, when the king heard it.", "def f(x):\n    return x + 1  # 2024",
               "Émile a mangé 東京 🎉 and   spaces")


def write_portable_tokenizer_config(folder: str | os.PathLike, words: Sequence[str]) -> dict[str, Any]:
    """Rewrite ``folder``'s tokenizer_config.json so transformers 4.x and 5.x load tokenizer.json unchanged.

    Sets tokenizer_class to the generic class, then asks transformers' AutoTokenizer (with the folder's
    config.json, so its model type counts) whether it tokenizes sentences holding ``words`` as tokenizer.json
    does; where it does not, writes the LOAD_FILE_AS_IS entry and asks again (kept only if it helps).
    Returns {"tokenizer_class", "load_as_is", "autotokenizer_exact", "autotokenizer_class"}.
    """
    path = Path(folder) / "tokenizer_config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    config["tokenizer_class"] = GENERIC_TOKENIZER_CLASS
    config.pop(LOAD_FILE_AS_IS, None)
    _write(path, config)
    texts = probe_texts(words)
    exact, loaded = autotokenizer_matches(folder, texts)
    load_as_is = not exact
    if load_as_is:
        _write(path, config | {LOAD_FILE_AS_IS: True})
        exact, loaded = autotokenizer_matches(folder, texts)
        if not exact:  # the entry did not help: the folder keeps the plain config, and the report says so
            _write(path, config)
            load_as_is = False
    return {"tokenizer_class": GENERIC_TOKENIZER_CLASS, "load_as_is": load_as_is, "autotokenizer_exact": exact,
            "autotokenizer_class": loaded}


def _write(path: Path, config: dict[str, Any]) -> None:
    path.write_text(json.dumps(config, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")


def probe_texts(words: Sequence[str]) -> list[str]:
    """Sentences with each word in every PROBES form, then PLAIN_TEXTS. E.g. ["Abc"] -> ["They saw Abc there.", ...]."""
    return [p.format(w) for w in words for group in PROBES.values() for p in group] + list(PLAIN_TEXTS)


def autotokenizer_matches(folder: str | os.PathLike, texts: Sequence[str]) -> tuple[bool, str]:
    """Whether AutoTokenizer.from_pretrained(folder) gives tokenizer.json's ids on every text, and its class name."""
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    reference = Tokenizer.from_file(str(Path(folder) / "tokenizer.json"))
    loaded = AutoTokenizer.from_pretrained(folder)
    expected = [e.ids for e in reference.encode_batch(list(texts), add_special_tokens=False)]
    return loaded(list(texts), add_special_tokens=False)["input_ids"] == expected, type(loaded).__name__


def tokenizer_ids(folder: str | os.PathLike) -> tuple[int, int]:
    """(number of tokens, largest id) of tokenizer.json: its vocabulary and added tokens."""
    spec = json.loads((Path(folder) / "tokenizer.json").read_text(encoding="utf-8"))
    vocab = spec["model"]["vocab"]
    ids = set(vocab.values()) if isinstance(vocab, dict) else set(range(len(vocab)))
    ids |= {t["id"] for t in spec.get("added_tokens", [])}
    return len(ids), max(ids)


def config_vocab_size(folder: Path) -> int:
    """The vocab_size of config.json's text config (its "text_config" when it has one, as get_text_config reads),
    read as JSON so that a model type transformers does not know still gets checked."""
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    text = config.get("text_config") or config
    return int(text.get("vocab_size", config.get("vocab_size", 0)))


def model_matrices(model: Any) -> Matrices:
    """(input matrix, output matrix, output bias or None) of a model in memory; a tied model's output is its input."""
    layout = embedding_layout(model)
    head = layout.output if layout.output is not None and not layout.tied else layout.input
    return layout.input.weight.detach(), head.weight.detach(), layout.output.bias.detach() if layout.has_bias else None


def output_matrices(folder: Path) -> Matrices | None:
    """(input matrix, output matrix, output bias or None) from the folder's safetensors, in their stored dtype;
    None when the folder holds no safetensors or not under the model's own parameter names. The names come from
    the model built on the meta device (no memory), so every layout transformers knows is found; a tied model's
    output matrix is its input matrix."""
    from transformers import AutoConfig, AutoModelForCausalLM

    weight_map = safetensors_weight_map(folder)
    if not weight_map:
        return None
    try:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder))
    except (ValueError, KeyError):  # a model type transformers does not know (remote code): names unknown
        return None
    layout = embedding_layout(model)
    head = layout.output if layout.output is not None and not layout.tied else layout.input
    names = [module_name(model, layout.input) + ".weight", module_name(model, head) + ".weight"]
    if layout.has_bias:
        names.append(module_name(model, layout.output) + ".bias")
    if not all(name in weight_map for name in names):
        return None
    tensors = [read_tensor(folder / weight_map[name], name) for name in names]
    return tensors[0], tensors[1], tensors[2] if len(tensors) == 3 else None


def safetensors_weight_map(folder: Path) -> dict[str, str]:
    """Tensor name -> file name for a folder's model.safetensors or its index; {} when there is neither."""
    from safetensors import safe_open

    index = folder / "model.safetensors.index.json"
    if index.is_file():
        return dict(json.loads(index.read_text(encoding="utf-8"))["weight_map"])
    if not (folder / "model.safetensors").is_file():
        return {}
    with safe_open(str(folder / "model.safetensors"), framework="pt") as handle:
        return {name: "model.safetensors" for name in handle.keys()}


def read_tensor(path: Path, name: str) -> Tensor:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        return handle.get_tensor(name)


def tokens_before_of(real: int, new_token_ids: Sequence[int]) -> int:
    """The rows whose mean rows/layout.py writes into padding rows: those before the new tokens when they were
    appended (ids real-k .. real-1), else all ``real`` rows. E.g. real=10, new ids [8, 9] -> 8."""
    ids = sorted(new_token_ids)
    return real - len(ids) if ids and ids == list(range(real - len(ids), real)) else real


def unsafe_padding_rows(head: Tensor, bias: Tensor | None, real: int, reference: int) -> list[int]:
    """Ids of rows at or past ``real`` (the tokenizer's size) whose output row could be sampled: neither the
    mean of rows [0, reference) (bias too), within the rounding of the stored dtype, nor carrying a bias <=
    NEVER_SAMPLED_BIAS.

    E.g. rows [[1, 0], [3, 0], [2, 0], [0, 0]], real=reference=2 -> [3] (row 2 is the mean, row 3 zeros)."""
    if head.shape[0] <= real:
        return []
    safe = _near(head[real:].float(), stats.row_mean(head[:reference]), head.dtype).all(dim=1)
    if bias is not None:
        pad_bias = bias[real:].float()
        safe &= _near(pad_bias, bias[:reference].float().mean(), bias.dtype)
        safe |= pad_bias <= NEVER_SAMPLED_BIAS
    return [real + int(i) for i in torch.nonzero(~safe).flatten()]


def _near(values: Tensor, target: Tensor, dtype: torch.dtype) -> Tensor:
    """Elementwise: ``values`` equal ``target`` (float32) up to a few roundings to ``dtype``."""
    tolerance = 4 * torch.finfo(dtype).eps * target.abs() + 1e-6
    return (values - target).abs() <= tolerance


def check_serving(folder: str | os.PathLike, new_token_ids: Sequence[int] | None = None, *,
                  original_rows: int | None = None, matrices: Matrices | None = None) -> dict[str, Any]:
    """The vLLM rules (module docstring) on a saved folder. Returns the figures, "problems" (one line each; empty
    when every rule holds), "notes" and "ok". Spare rows the original model already had past its tokenizer
    (ids below ``original_rows``) are kept as they were (rows/layout.py never writes them): not being the mean row,
    they are a note, not a problem. Without ``new_token_ids`` (and ``original_rows``), the folder's
    expansion.json gives them, when it has one. ``matrices``: the saved model's (input, output, bias), when the
    caller holds them (a save); else they are read from the folder's safetensors.
    """
    folder = Path(folder)
    if new_token_ids is None:
        saved = saved_report(folder) if (folder / "expansion.json").is_file() else {}
        new_token_ids = (saved.get("fine_tuning") or {}).get("new_token_ids") or []
        original_rows = saved.get("rows_before") if original_rows is None else original_rows
    vocab_size = config_vocab_size(folder)
    size, max_id = tokenizer_ids(folder)
    engine_vocab = max(max_id + 1, vocab_size)
    report: dict[str, Any] = {"config_vocab_size": vocab_size, "tokenizer_size": size, "max_token_id": max_id,
                              "engine_vocab_size": engine_vocab, "notes": []}
    problems = [f"new id {i} is outside the vocabulary vLLM reports ({engine_vocab})"
                for i in new_token_ids if not 0 <= i < engine_vocab]
    if matrices is None or any(t is not None and t.is_meta for t in matrices):  # offloaded to disk: read them
        matrices = output_matrices(folder)
    if matrices is None:
        report["notes"].append("matrices not checked: the folder holds no safetensors with the model's embedding "
                               "and head under their parameter names")
    else:
        problems += matrix_problems(report, *matrices, vocab_size=vocab_size, real=max_id + 1,
                                    new_token_ids=new_token_ids, original_rows=original_rows or 0)
    return report | {"problems": problems, "ok": not problems}


def matrix_problems(report: dict[str, Any], embedding: Tensor, head: Tensor, bias: Tensor | None, *,
                    vocab_size: int, real: int, new_token_ids: Sequence[int], original_rows: int) -> list[str]:
    """Fill ``report`` with the row counts and padding figures; the problems found, one line each."""
    rows = {"input": embedding.shape[0], "output": head.shape[0]}
    if bias is not None:
        rows["bias"] = bias.shape[0]
    unsafe = unsafe_padding_rows(head, bias, real, tokens_before_of(real, new_token_ids))
    kept = [i for i in unsafe if i < original_rows]
    written = [i for i in unsafe if i >= original_rows]
    report |= {"rows": rows, "padding_rows": max(0, head.shape[0] - real), "unsafe_padding_rows": len(written),
               "kept_spare_rows": len(kept)}
    problems = [f"config vocab_size {vocab_size} differs from the {name} rows ({n})"
                for name, n in rows.items() if n != vocab_size]
    problems += [f"new id {i} has no row (the matrices have {min(rows.values())})"
                 for i in new_token_ids if i >= min(rows.values())]
    if written:
        problems.append(f"{len(written)} padding row(s) past the tokenizer (ids {written[0]}..{written[-1]}) have an "
                        "output row that is not the mean row: vLLM samples over every row and could emit them")
    if kept:
        report["notes"].append(f"{len(kept)} spare row(s) the original model had past its tokenizer (ids {kept[0]}.."
                               f"{kept[-1]}) keep their rows; vLLM can sample them, as it could before")
    return problems


def finish_folder(folder: str | os.PathLike, report: dict[str, Any],
                  matrices: Matrices | None = None) -> dict[str, Any]:
    """After a save: make the tokenizer files portable, then check the vLLM rules, for the expansion ``report``
    (expansion.json's content) and the saved ``matrices`` (read from the folder when None). Returns the serving
    figures, {"tokenizer": ..., "vllm": ..., "llama_cpp": ...}, which report.saved_record puts in the record."""
    words = [t["word"] for t in report.get("new_tokens", [])]
    ids = (report.get("fine_tuning") or {}).get("new_token_ids") or [t["id"] for t in report.get("new_tokens", [])]
    tokenizer = write_portable_tokenizer_config(folder, words)
    vllm = check_serving(folder, ids, original_rows=report.get("rows_before"), matrices=matrices)
    from .gguf_export import llama_cpp_support  # what llama.cpp (GGUF) reproduces of this tokenizer

    llama_cpp = llama_cpp_support(folder, report.get("new_tokens", []))
    return {"tokenizer": tokenizer, "vllm": vllm, "llama_cpp": llama_cpp}


def save_model(model: Any, tokenizer: Any, path: str | os.PathLike, expansion: Any, *,
               force: bool = False) -> dict[str, Any]:
    """Save a fine-tuned (merged) expanded model as Expansion.save does: atomically, with the portable tokenizer
    files and the vLLM check, and expansion.json carried over with "serving" for this folder. Returns "serving".

    ``expansion``: the Expansion, or the folder it was saved to. A plain ``tokenizer.save_pretrained`` under
    transformers 5 writes the class name `TokenizersBackend` (transformers 4.x refuses it) and, for Qwen 2
    folders, loses the LOAD_FILE_AS_IS entry; this writes both back.
    """
    from .io import atomic_directory, write_json
    from .report import saved_record

    report = saved_report(expansion)
    with atomic_directory(path, force=force) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        report = saved_record(report, finish_folder(tmp, report, model_matrices(model)))
        write_json(tmp / "expansion.json", report)
    return report["serving"]


def saved_report(expansion: Any) -> dict[str, Any]:
    """The expansion report of an Expansion, or of the folder it was saved to (its expansion.json)."""
    from .errors import InvalidTypeError, MissingResourceError

    if isinstance(expansion, (str, os.PathLike)):
        path = Path(expansion) / "expansion.json"
        if not path.is_file():
            raise MissingResourceError(f"{expansion} holds no expansion.json: pass a folder saved by vocab-expand, "
                                       "or the Expansion that expand returned")
        return json.loads(path.read_text(encoding="utf-8"))
    report = getattr(expansion, "report", None)
    if not isinstance(report, dict):
        raise InvalidTypeError(f"expansion must be what expand returned or the folder it was saved to, not "
                               f"{type(expansion).__name__}")
    return report


def serving_warnings(serving: dict[str, Any] | None) -> list[str]:
    """One line per way a loader would not read the saved folder as it is (the CLI prints them after a save).

    E.g. {"tokenizer": {"autotokenizer_exact": True, ...}, "vllm": {"problems": ["x"], ...}} -> ["vLLM: x"]."""
    if not serving:
        return []
    lines = [] if serving["tokenizer"]["autotokenizer_exact"] else [
        f"AutoTokenizer loads this folder as {serving['tokenizer']['autotokenizer_class']}, which tokenizes "
        "differently from its tokenizer.json: load it with PreTrainedTokenizerFast.from_pretrained"]
    return lines + [f"vLLM: {problem}" for problem in serving["vllm"]["problems"]]
