"""`expand_checkpoint`: expand a safetensors model folder with static strategies, without building the model.

A static strategy (any that is not a DataDrivenStrategy: mean, subword, hf_default, zeros, random, mean_cov)
needs only the old embedding and head matrices. So only those tensors are read, in their stored dtype, and the
rows go through the code expand() uses (rows.compute.starting_rows, rows.grow.grown_matrices: float32 maths, cast back to
the stored dtype): the grown matrices are bit-identical to expand() followed by save. A 7B model in bfloat16
never becomes 28 GB of float32 in memory. The output folder is written at once (io.atomic_directory):
- the shard(s) holding the embedding and head: rewritten with the grown tensors; their other tensors' bytes are
  copied as they are, one tensor at a time (never the whole shard in memory);
- every other shard: hard-linked when on the same filesystem (link=True), else copied;
- the index with its total_size (and total_parameters) updated; config.json with the new vocab_size (and
  tie_word_embeddings=False when a tied head is untied); the extended tokenizer; expansion.json (expand's
  report, method "checkpoint");
- the other top-level files (generation_config.json, README, licence) copied.

A hard-linked shard is the input's file under a second name: replace the output folder as a whole (expand,
save_pretrained into a new folder), never write into its shards in place, or pass link=False.

Left out: data-driven strategies (they run the model: load it and call expand); weights in other formats
(.bin, .gguf: load_model reads them) and quantized checkpoints; subfolders of the model folder.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import torch
from torch import Tensor
from transformers import PreTrainedTokenizerBase

from .config import ExpandConfig
from .errors import CorruptFileError, InvalidInputError, MissingResourceError
from .expansion import require_added, require_finite_rows
from .handoff import lora_arguments, token_indices
from .io import atomic_directory, check_output_dir, user_path, write_json
from .memory import peak_memory
from .loading import BUNDLED, plain_file_name, tokenizer_only, unreadable_as_corrupt
from .planning import TokenPlan, plan_tokens
from .rows.layout import record_untied, record_vocab_size
from .rows.compute import NewRows, OldMatrices, initializer_range, starting_rows
from .rows.policy import check_pair
from .report import expansion_record, saved_record
from .serving import finish_folder
from .strategies import get_strategy
from .rows.grow import GrownMatrices, grown_matrices, row_figures
from .tokenization import Skipped

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"
# (input embedding, output head) tensor names as transformers saves causal LMs, tried in this order.
EMBEDDING_NAMES = (
    ("model.embed_tokens.weight", "lm_head.weight"),  # Llama, Mistral, Qwen, Gemma, Phi, SmolLM2, OLMo
    ("transformer.wte.weight", "lm_head.weight"),  # GPT-2, GPT-J, CodeGen
    ("transformer.word_embeddings.weight", "lm_head.weight"),  # Bloom, Falcon
    ("gpt_neox.embed_in.weight", "embed_out.weight"),  # GPT-NeoX, Pythia
    ("model.decoder.embed_tokens.weight", "lm_head.weight"),  # OPT
)
# The stored dtypes whose rows are computed here (safetensors' names).
FLOAT_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
DTYPE_NAMES = {dtype: name for name, dtype in FLOAT_DTYPES.items()}
# Files the output gets anew (the tokenizer's are written by save_pretrained), or that a grown vocabulary makes
# stale (slow-tokenizer vocabularies): never copied.
REPLACED = {"config.json", "expansion.json", INDEX, "tokenizer.json", "tokenizer_config.json", "added_tokens.json",
            "special_tokens_map.json", "vocab.json", "merges.txt", "vocab.txt", "tokenizer.model", "spiece.model",
            "sentencepiece.bpe.model", "chat_template.jinja", "chat_template.json"}
# Weights in other formats hold the old vocabulary: left out rather than copied stale.
OTHER_WEIGHTS = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf", ".onnx")
COPY_CHUNK = 64 << 20  # bytes of a kept tensor copied at a time


@dataclass
class CheckpointExpansion:
    """The result of :func:`expand_checkpoint`: the folder written, the extended tokenizer, and the report
    (also saved as expansion.json). new_tokens, new_token_ids, words and skipped read as in Expansion."""

    path: Path
    tokenizer: PreTrainedTokenizerBase
    report: dict[str, Any] = field(default_factory=dict)

    @property
    def new_tokens(self) -> list[str]:
        return [t["token"] for t in self.report["new_tokens"]]

    @property
    def new_token_ids(self) -> list[int]:
        return [t["id"] for t in self.report["new_tokens"]]

    @property
    def words(self) -> list[str]:
        return [t["word"] for t in self.report["new_tokens"]]

    @property
    def skipped(self) -> list[Skipped]:
        return [Skipped(**s) for s in self.report["skipped"]]


@dataclass(frozen=True)
class Header:
    """A safetensors file's header: entries (tensor name -> {dtype, shape, data_offsets}), its __metadata__
    (or None), and start, the offset where the tensors' data begins."""

    entries: dict[str, Any]
    metadata: dict[str, str] | None
    start: int


@dataclass
class Checkpoint:
    """A safetensors model folder: the shard of each tensor, each shard's Header, and the index (None for a
    single model.safetensors)."""

    folder: Path
    weight_map: dict[str, str]
    index: dict[str, Any] | None
    headers: dict[str, Header]

    @classmethod
    def open(cls, folder: Path) -> "Checkpoint":
        """The checkpoint in ``folder``; MissingResourceError without safetensors, CorruptFileError when damaged."""
        if (folder / INDEX).is_file():
            try:
                index = json.loads((folder / INDEX).read_text(encoding="utf-8"))
                weight_map = dict(index["weight_map"])
            except (ValueError, KeyError, TypeError, RecursionError) as err:
                raise CorruptFileError(f"cannot read {folder / INDEX}: not a safetensors index ({err})") from err
            for shard in weight_map.values():
                plain_file_name(shard, folder / INDEX)  # a shard "../x" would be written outside the output
        elif (folder / SINGLE).is_file():
            index, weight_map = None, {name: SINGLE for name in read_header(folder / SINGLE).entries}
        else:
            raise MissingResourceError(f"{folder} holds no {SINGLE} or {INDEX}; expand_checkpoint reads safetensors "
                                       "only (load_model and expand read other formats)")
        missing = sorted({s for s in weight_map.values() if not (folder / s).is_file()})
        if missing:
            raise MissingResourceError(f"{folder} lacks the shard(s) its index names: {', '.join(missing)}")
        return cls(folder, weight_map, index, {s: read_header(folder / s) for s in sorted(set(weight_map.values()))})

    def entry(self, name: str) -> dict[str, Any]:
        return self.headers[self.weight_map[name]].entries[name]

    def read(self, name: str) -> Tensor:
        """One stored tensor, in its stored dtype (only its bytes are read)."""
        from safetensors import safe_open

        path = self.folder / self.weight_map[name]
        with unreadable_as_corrupt(path), safe_open(str(path), framework="pt") as handle:
            return handle.get_tensor(name)

    def numel(self) -> int:
        """Elements of every stored tensor, from the headers."""
        return sum(math.prod(e["shape"]) for header in self.headers.values() for e in header.entries.values())


def read_header(path: Path) -> Header:
    """The header of a safetensors file (only the header is read); CorruptFileError when it is damaged."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        raw = handle.read(8)
        length = struct.unpack("<Q", raw)[0] if len(raw) == 8 else -1
        if not 0 < length <= size - 8:
            raise CorruptFileError(f"cannot read {path}: not a safetensors file (the file looks truncated or damaged)")
        try:
            header = json.loads(handle.read(length))
        except (ValueError, RecursionError) as err:
            raise CorruptFileError(f"cannot read {path}: its safetensors header is damaged ({str(err)[:120]})") from err
    if not isinstance(header, dict):
        raise CorruptFileError(f"cannot read {path}: its safetensors header is not a JSON object (damaged file)")
    metadata = header.pop("__metadata__", None)
    for name, entry in header.items():
        if not _is_entry(entry, 8 + length, size):
            raise CorruptFileError(f"cannot read {path}: the header entry of {str(name)[:80]!r} is not a dtype, shape "
                                   "and data offsets inside the file (the file looks truncated or damaged)")
    if metadata is not None and not isinstance(metadata, dict):
        raise CorruptFileError(f"cannot read {path}: its __metadata__ is not a JSON object (damaged file)")
    return Header(header, metadata, 8 + length)


def _is_entry(entry: object, start: int, size: int) -> bool:
    """Whether a safetensors header entry is a dict with a str dtype, a shape of ints >= 0 and two data offsets
    that lie inside the file."""
    if not isinstance(entry, dict) or not isinstance(entry.get("dtype"), str):
        return False
    shape, offsets = entry.get("shape"), entry.get("data_offsets")
    ints = lambda v: isinstance(v, list) and all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in v)  # noqa: E731
    return ints(shape) and ints(offsets) and len(offsets) == 2 and offsets[0] <= offsets[1] <= size - start


@dataclass(frozen=True)
class EmbeddingNames:
    """Where the matrices are stored: the input embedding; the head (stored, or added when a tied model is
    untied); the head's bias, or None. head_stored: whether the checkpoint holds the head."""

    input: str
    head: str
    head_stored: bool
    bias: str | None


def find_embeddings(checkpoint: Checkpoint, tied: bool) -> EmbeddingNames:
    """The names of the embedding and head tensors (EMBEDDING_NAMES); a one-line error when they are absent."""
    for input_name, head in EMBEDDING_NAMES:
        if input_name not in checkpoint.weight_map:
            continue
        stored = head in checkpoint.weight_map
        if not tied and not stored:
            raise InvalidInputError(f"{checkpoint.folder} is an untied model without its head {head!r} in the "
                                    "safetensors; expand the loaded model instead (load_model + expand, --load-model)")
        bias = head.removesuffix("weight") + "bias"
        return EmbeddingNames(input_name, head, stored, bias if bias in checkpoint.weight_map else None)
    looked = ", ".join(name for name, _ in EMBEDDING_NAMES)
    raise InvalidInputError(f"found no input embedding in {checkpoint.folder}'s safetensors (looked for {looked}); "
                            "expand the loaded model instead (load_model + expand, CLI --load-model)")


def is_static(config: ExpandConfig) -> bool:
    """Whether both strategies (after "auto" without text) compute rows from the old matrices alone."""
    config = config.resolved(False)
    return not any(get_strategy(name).needs_corpus for name in (config.input_init, config.output_init))


def holds_safetensors(model: str | os.PathLike) -> bool:
    """Whether ``model`` names a local folder with safetensors weights (not a bundled alias)."""
    path = user_path(model)
    return str(model) not in BUNDLED and path.is_dir() and any((path / n).is_file() for n in (INDEX, SINGLE))


def expand_checkpoint(folder: str | os.PathLike, words: Iterable[str], output: str | os.PathLike, *,
                      input_init: str | None = None, output_init: str | None = None, seed: int | None = None,
                      force: bool = False, allow_empty: bool = False, link: bool = True, progress: bool = False,
                      **options: Any) -> CheckpointExpansion:
    """Add ``words`` to the model folder ``folder`` (safetensors) and write the result to ``output``, reading
    only the embedding and head tensors. Strategies and options as in expand() (without text the default is
    subword/mean); a strategy that learns from text is refused. The output loads with plain from_pretrained;
    an existing one is only replaced with force=True. ``link``: hard-link the unchanged shards (else copy)."""
    start = time.perf_counter()
    source = user_path(folder)
    check_output_dir(output, force, inputs=[source])  # before any work
    config = checkpoint_config(dict(input_init=input_init, output_init=output_init, seed=seed), options)
    checkpoint, model_config = open_model_folder(source)
    plan = plan_tokens(tokenizer_only(source), words, config)
    require_added([e.token for e in plan.entries], plan.skipped, allow_empty)
    with peak_memory() as peak:  # reading and growing the matrices; the shards are then streamed
        old, names = read_matrices(checkpoint, model_config)
        rows = starting_rows(old, plan, config, check_pair(old.tied, config, False))
        reused = [i for i in plan.new_token_ids if i < plan.tokens_before]
        own_head = None if rows.tied else old.output.clone() if old.output is old.input else old.output
        grown = grown_matrices(old.input, own_head, None if rows.tied else old.bias, plan.tokens_before, rows,
                               config.pad_to_multiple_of, reused)
        tensors = grown_tensors(names, grown)
        require_finite_rows([grown.input, grown.output, grown.bias], plan.new_token_ids)
    figures = row_figures(grown.plan, rows, len(reused),
                          *parameter_counts(checkpoint, names, old.tied, rows.tied, tensors))
    lora = checkpoint_lora(plan, rows, names)
    report = expansion_record(plan, figures, config, method="checkpoint", seconds=time.perf_counter() - start,
                              lora=lora, peak=peak, source={"model": str(folder), "corpus": None})
    record_vocab_size(model_config, grown.plan.new_rows)
    if old.tied and not rows.tied:
        record_untied(model_config)
    with atomic_directory(output, force=force, inputs=[source]) as tmp:
        files = write_weights(checkpoint, tmp, tensors, checkpoint.weight_map[names.input], link, progress)
        model_config.save_pretrained(tmp)
        plan.tokenizer.save_pretrained(tmp)
        head = grown.output if grown.output is not None else grown.input
        report = saved_record(report, finish_folder(tmp, report, (grown.input, head, grown.bias)), files)
        write_json(tmp / "expansion.json", report)
    return CheckpointExpansion(Path(output), plan.tokenizer, report)


def checkpoint_config(given: dict[str, Any], options: dict[str, Any]) -> ExpandConfig:
    """The resolved ExpandConfig of a checkpoint expansion; a one-line error for text, or a strategy that
    learns from it (it runs the model, so the model must be loaded)."""
    if "corpus" in options:
        raise InvalidInputError("expand_checkpoint reads no text: leave out corpus, or load the model and call "
                                "expand(model, tokenizer, words, corpus=...) to learn rows from it")
    config = ExpandConfig(**{k: v for k, v in given.items() if v is not None}, **options).resolved(False)
    if not is_static(config):
        learners = [n for n in (config.input_init, config.output_init) if get_strategy(n).needs_corpus]
        raise InvalidInputError(f"{' and '.join(dict.fromkeys(learners))} learn rows from domain text by running the "
                                "model, so they cannot expand a checkpoint folder: load the model and call "
                                "expand(..., corpus=...) (CLI: --corpus), or choose strategies that need no text "
                                "(e.g. subword/mean)")
    return config


def open_model_folder(source: Path) -> tuple[Checkpoint, Any]:
    """The checkpoint and the model config (AutoConfig: the class defaults, no weights) of a local folder."""
    from transformers import AutoConfig

    if not (source / "config.json").is_file():
        raise MissingResourceError(f"{source} is not a model folder with config.json; expand_checkpoint needs a "
                                   "local folder of safetensors (for an alias, a .gguf file or a hub id: load_model "
                                   "+ expand)")
    checkpoint = Checkpoint.open(source)
    with unreadable_as_corrupt(source):
        config = AutoConfig.from_pretrained(str(source))
    if getattr(config, "quantization_config", None):
        raise InvalidInputError(f"{source} is a quantized checkpoint; its rows cannot be grown in place: load the "
                                "model and call expand")
    return checkpoint, config


def read_matrices(checkpoint: Checkpoint, model_config: Any) -> tuple[OldMatrices, EmbeddingNames]:
    """The old matrices, read in their stored dtype; the head is the input's tensor on a tied model. As in
    transformers, a tied model whose checkpoint holds a head that differs from the input is untied."""
    tied = bool(getattr(model_config, "tie_word_embeddings", False))
    names = find_embeddings(checkpoint, tied)
    for name in (names.input, names.head if names.head_stored else None):
        entry = checkpoint.entry(name) if name else None
        if entry and (entry["dtype"] not in FLOAT_DTYPES or len(entry["shape"]) != 2):
            raise InvalidInputError(f"{name} is a {entry['dtype']} tensor of shape {entry['shape']}; expand_checkpoint "
                                    f"grows float matrices ({', '.join(FLOAT_DTYPES)}): load the model and call expand")
    matrix = checkpoint.read(names.input)
    head = checkpoint.read(names.head) if names.head_stored else matrix
    tied = tied and (head is matrix or torch.equal(head, matrix))
    if head.shape[0] != matrix.shape[0]:
        raise InvalidInputError(f"input ({matrix.shape[0]}) and output ({head.shape[0]}) row counts differ; "
                                "vocab-expand needs one vocabulary for both")
    bias = checkpoint.read(names.bias) if names.bias else None
    return OldMatrices(matrix, matrix if tied else head, bias, tied, initializer_range(model_config)), names


def grown_tensors(names: EmbeddingNames, grown: GrownMatrices) -> dict[str, Tensor]:
    """Stored name -> grown tensor: the input; the head's own matrix, or the shared one where a tied
    checkpoint stores a copy; the bias."""
    tensors = {names.input: grown.input}
    if grown.output is not None or names.head_stored:
        tensors[names.head] = grown.output if grown.output is not None else grown.input
    if grown.bias is not None and names.bias:
        tensors[names.bias] = grown.bias
    return tensors


def parameter_counts(checkpoint: Checkpoint, names: EmbeddingNames, was_tied: bool, now_tied: bool,
                     tensors: dict[str, Tensor]) -> tuple[int, int]:
    """(before, after) as model.parameters() counts them: every stored tensor, a tied model's stored copy of
    the shared matrix once (for models without persistent buffers, the parameter count)."""
    def counted(tied: bool) -> list[str]:
        return [n for n in (names.input, None if tied else names.head, names.bias) if n]

    stored = {n: math.prod(checkpoint.entry(n)["shape"]) for n in counted(False) if n in checkpoint.weight_map}
    before = checkpoint.numel() - (stored[names.head] if was_tied and names.head_stored else 0)
    new = {n: t.numel() for n, t in tensors.items()}
    after = before - sum(stored.get(n, 0) for n in counted(was_tied)) + sum(
        new.get(n, stored.get(n, 0)) for n in counted(now_tied))
    return before, after


def module_names(names: EmbeddingNames) -> tuple[str, str]:
    """The (input, head) module names of the tensor names: "model.embed_tokens.weight" -> "model.embed_tokens"."""
    return names.input.removesuffix(".weight"), names.head.removesuffix(".weight")


def checkpoint_lora(plan: TokenPlan, rows: NewRows, names: EmbeddingNames) -> dict[str, Any] | None:
    """The PEFT arguments for fine-tuning the new rows (handoff.lora_arguments), from the stored tensor names;
    None when nothing was added."""
    indices = token_indices(plan.new_token_ids, None if rows.tied else module_names(names))
    return lora_arguments(indices) if plan.entries else None


def write_weights(checkpoint: Checkpoint, tmp: Path, tensors: dict[str, Tensor], home: str, link: bool,
                  progress: bool) -> dict[str, list[str]]:
    """Write the weights into ``tmp``: shards holding a grown tensor rewritten (an added head goes to ``home``,
    the input's shard), the others linked or copied, the index updated, other top-level files copied.
    Returns the file names by what was done with them."""
    from tqdm.auto import tqdm

    placed = {name: checkpoint.weight_map.get(name, home) for name in tensors}
    files: dict[str, list[str]] = {"rewritten": [], "linked": [], "copied": [], "left_out": []}
    for shard in tqdm(sorted(checkpoint.headers), desc="shards", unit="file", disable=not progress):
        if shard in placed.values():
            updates = {n: t for n, t in tensors.items() if placed[n] == shard}
            write_shard(checkpoint.folder / shard, tmp / shard, updates, checkpoint.headers[shard])
            files["rewritten"].append(shard)
        else:
            files["linked" if link_or_copy(checkpoint.folder / shard, tmp / shard, link) else "copied"].append(shard)
    if checkpoint.index is not None:
        write_json(tmp / INDEX, updated_index(checkpoint, tensors, placed))
    for path in sorted(checkpoint.folder.iterdir()):
        if path.name in checkpoint.headers or path.name in REPLACED:
            continue
        if path.is_file() and not path.name.endswith(OTHER_WEIGHTS):
            shutil.copyfile(path, tmp / path.name)
            files["copied"].append(path.name)
        else:
            files["left_out"].append(path.name)
    return files


def link_or_copy(source: Path, target: Path, link: bool) -> bool:
    """Hard-link ``source`` as ``target`` when asked and possible (same filesystem), else copy it; True if linked."""
    if link:
        try:
            os.link(source, target)
            return True
        except OSError:  # another filesystem, or links not allowed here: copy instead
            pass
    shutil.copyfile(source, target)
    return False


def updated_index(checkpoint: Checkpoint, tensors: dict[str, Tensor], placed: dict[str, str]) -> dict[str, Any]:
    """The index with added tensors mapped, and the metadata's total_size (bytes) and total_parameters (elements,
    transformers 5) changed by what the grown tensors add."""
    index = json.loads(json.dumps(checkpoint.index))
    index["weight_map"] = dict(sorted((checkpoint.weight_map | placed).items()))
    replaced = [checkpoint.entry(n) for n in tensors if n in checkpoint.weight_map]
    added = {
        "total_size": sum(t.numel() * t.element_size() for t in tensors.values())
        - sum(e["data_offsets"][1] - e["data_offsets"][0] for e in replaced),
        "total_parameters": sum(t.numel() for t in tensors.values()) - sum(math.prod(e["shape"]) for e in replaced),
    }
    metadata = index.get("metadata") or {}
    for key, change in added.items():
        if key in metadata:
            metadata[key] = int(metadata[key]) + change
    return index


def write_shard(source: Path, target: Path, updates: dict[str, Tensor], shard: Header) -> None:
    """Write the safetensors file ``source`` as ``target`` with ``updates`` (name -> tensor, replaced or added
    after the others): the other tensors' bytes are copied unchanged, in their order, a chunk at a time."""
    header = shard.entries
    names = sorted(header, key=lambda n: header[n]["data_offsets"][0]) + [n for n in updates if n not in header]
    entries, offset = {}, 0
    for name in names:
        if name in updates:
            tensor = updates[name]
            entry = {"dtype": DTYPE_NAMES[tensor.dtype], "shape": list(tensor.shape)}
            size = tensor.numel() * tensor.element_size()
        else:
            begin, end = header[name]["data_offsets"]
            entry, size = {"dtype": header[name]["dtype"], "shape": header[name]["shape"]}, end - begin
        entries[name] = entry | {"data_offsets": [offset, offset + size]}
        offset += size
    blob = json.dumps(({"__metadata__": shard.metadata} if shard.metadata else {}) | entries,
                      separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # safetensors aligns the data on 8 bytes
    with open(source, "rb") as old, open(target, "wb") as new:
        new.write(struct.pack("<Q", len(blob)) + blob)
        for name in names:
            if name in updates:
                new.write(updates[name].detach().contiguous().reshape(-1).view(torch.uint8).numpy())
            else:
                begin, end = header[name]["data_offsets"]
                copy_range(old, new, shard.start + begin, end - begin, source)


def copy_range(old: Any, new: Any, offset: int, size: int, source: Path) -> None:
    """Copy ``size`` bytes of ``old`` from ``offset`` to ``new``, COPY_CHUNK at a time."""
    old.seek(offset)
    while size:
        chunk = old.read(min(size, COPY_CHUNK))
        if not chunk:
            raise CorruptFileError(f"cannot read {source}: it ends before its tensors do (the file looks truncated)")
        new.write(chunk)
        size -= len(chunk)
