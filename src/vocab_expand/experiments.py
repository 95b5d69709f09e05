"""`compare`: fine-tune the expanded model under each initialization and show which adapts fastest.

The experiment of Hewitt's post, reproducible on the user's own model and text: for every strategy, expand
with the same words, then fine-tune on the train split with identical data order, seed and hyperparameters
(training/), evaluating held-out bits per character (and token perplexity, and the probability on the new
tokens) at step 0 and every eval_every steps. Then: steps-to-target, the steps each strategy needs to reach
the final value of transformers' default (hf_default), a table and a curve plot.

RUNS/ layout: run.json (what was asked; a rerun with the same request resumes), one folder per strategy
(config.json, metrics.jsonl, checkpoint/, state.json, final/ when asked), comparison.json, report.md,
bits_per_character.png, train_loss.png.

Left out: the training loop (training/), the expansion (expansion.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from torch import nn
from transformers import PreTrainedTokenizerBase

from .corpus import Corpus, load_corpus
from .heldout import heldout_sample
from .pairs import StrategyPair, parse_strategies
from .errors import InvalidInputError, OutputExistsError
from .config import ExpandConfig
from .expansion import apply_plan, grow_model
from .io import check_existing_kind, check_no_overlap, check_writable, user_path, write_json
from .diagnostics import addable_plan
from .rows.policy import check_strategies
from .tokenization import check_words, start_token_id
from .report import write_comparison
from .training import RunFolder, TrainConfig, TrainingData, data_order, pack, train_run
from .training.optim import check_lora_targets

DEFAULT_COMPARE = ("hf_default", "random", "zeros", "mean", "subword/mean", "distill/fit")
REFERENCE = "hf_default"


@dataclass
class Comparison:
    """What :func:`compare` measured. evaluations[name]: records with step, bits_per_character,
    token_perplexity, new_token_probability; losses[name]: records with step, train_loss, lr."""

    label: str
    evaluations: dict[str, list[dict[str, Any]]]
    losses: dict[str, list[dict[str, Any]]]
    status: dict[str, str]
    config: dict[str, Any]
    reference: str
    target_bpc: float | None
    steps_to_target: dict[str, int | None] = field(default_factory=dict)
    processes: int = 1

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "processes": self.processes, "reference": self.reference, "target_bpc": self.target_bpc,
                "steps_to_target": self.steps_to_target, "status": self.status, "config": self.config,
                "summary": self.summary(), "evaluations": self.evaluations}

    def summary(self) -> dict[str, dict[str, Any]]:
        """Per strategy: bits per character at step 0, final and best; new-token probability at 0 and final; the
        steps whose update was skipped for an inf or nan gradient."""
        out = {}
        for name, records in self.evaluations.items():
            if records:
                finite = [r["bits_per_character"] for r in records if math.isfinite(r["bits_per_character"])]
                out[name] = {"bpc_start": records[0]["bits_per_character"], "bpc_final": records[-1]["bits_per_character"],
                             "bpc_best": min(finite, default=math.nan), "final_step": records[-1]["step"],
                             "new_token_probability_start": records[0]["new_token_probability"],
                             "new_token_probability_final": records[-1]["new_token_probability"],
                             "adoption_start": records[0].get("adoption", math.nan),
                             "adoption_final": records[-1].get("adoption", math.nan),
                             "steps_to_target": self.steps_to_target.get(name),
                             "skipped_steps": [r["step"] for r in self.losses.get(name, []) if r.get("skipped")]}
        return out


def compare(
    model: str | nn.Module,
    corpus: str | Corpus,
    words: Iterable[str],
    strategies: Iterable[str] | str = DEFAULT_COMPARE,
    output: str | os.PathLike | None = None,
    *,
    tokenizer: PreTrainedTokenizerBase | None = None,
    twin: bool = False,
    force: bool = False,
    progress: bool = True,
    expand_options: dict[str, Any] | None = None,
    load_options: dict[str, Any] | None = None,
    **train_options: Any,
) -> Comparison:
    """Expand ``model`` with ``words`` under each strategy and fine-tune each the same way; see the module doc.

    ``model``: a bundled alias, folder, .gguf or hub id, or a loaded model (then pass ``tokenizer``).
    ``twin=True`` runs on the model's negative-logit twin. ``output``: the RUNS/ folder (a rerun with the
    same request resumes; a different request needs ``force``). ``load_options``: load_model's device, dtype
    and device_map, for a model given by name. ``train_options``: TrainConfig fields (steps, eval_every,
    learning_rate, batch_size, train, bf16, max_time_s, ...). A model given by name is loaded on CUDA when
    available (load_options' default device, auto), so distill and fit run there too, not on the CPU.
    """
    from accelerate import Accelerator

    config = TrainConfig(**train_options)
    pairs = parse_strategies(strategies)
    word_list = check_words(words)
    if output is not None:  # before any work: the folder must be writable and hold none of the inputs
        check_runs_folder(Path(output), [m for m in (model, corpus) if isinstance(m, (str, os.PathLike))])
    label, model, tokenizer, corpus = _inputs(model, tokenizer, corpus, twin, load_options or {})
    options = dict(expand_options or {})
    configs = {pair: ExpandConfig(input_init=pair.input, output_init=pair.output, seed=config.seed,
                                  **options).resolved(True) for pair in pairs}  # compare always has text
    checked = {pair: check_strategies(model, c, True) for pair, c in configs.items()}  # before RUNS/ is touched
    check_lora_targets(model, config)
    plan = addable_plan(tokenizer, word_list, options, "compare")
    data = training_data(plan, tokenizer, corpus, config)
    data_order(data.rows.shape[0], config)  # text too short for the steps: refused before RUNS/ is touched
    # cpu=True without a GPU: under a multi-process launcher Accelerate then runs gloo across CPU processes.
    accelerator = Accelerator(cpu=not _has_gpu(), mixed_precision="bf16" if config.bf16 and _bf16_supported() else "no")
    request = {"label": label, "corpus": corpus.name, "words": word_list, "strategies": [p.name for p in pairs],
               "train": config.to_dict(), "expand": _jsonable(options)}
    with _runs_folder(output, request, force, accelerator) as runs:
        status = {}
        for pair in pairs:
            status[pair.name] = _run_strategy(model, plan, pair, (configs[pair], checked[pair]), corpus, data, config,
                                              options, RunFolder(runs / folder_name(pair)), accelerator, progress)
        comparison = collect(runs, pairs, label, status, request)
        comparison.processes = accelerator.num_processes
        if accelerator.is_main_process:
            write_comparison(comparison, runs)
        accelerator.wait_for_everyone()
    return comparison


def check_runs_folder(path: Path, inputs: list) -> None:
    """RUNS/ may exist (a rerun resumes), but must be writable and overlap neither the model nor the corpus."""
    local = [str(i) for i in inputs if str(i) not in ("kjv",) and user_path(str(i)).exists()]
    check_existing_kind(user_path(path), "folder")
    check_no_overlap(path, local)
    check_writable(path)


def _inputs(model, tokenizer, corpus, twin, load_options):
    from .loading import load_model

    label = model if isinstance(model, str) else type(model).__name__
    if isinstance(model, str):
        model, tokenizer = load_model(model, **load_options)
    elif tokenizer is None:
        raise InvalidInputError("pass tokenizer= with a loaded model (or pass the model's name or folder instead)")
    corpus = load_corpus(corpus) if isinstance(corpus, (str, os.PathLike)) else corpus
    if twin:
        from .twin import negative_logit_twin

        model, label = negative_logit_twin(model, tokenizer, corpus), f"{label} negative-logit twin"
    return label, model, tokenizer, corpus


def _has_gpu() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def _bf16_supported() -> bool:
    import torch

    return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())


@contextlib.contextmanager
def _runs_folder(output, request: dict, force: bool, accelerator) -> Iterator[Path]:
    """RUNS/: created, resumed when run.json matches the request, refused otherwise; with force, a different
    run's own files are removed (see clear_run) and nothing else. A folder holding other things is never a run
    folder. Without an output folder, a temporary one that is removed afterwards."""
    tmp = tempfile.mkdtemp(prefix="vocab-expand-compare-") if output is None else None
    path = Path(tmp or output)
    run_file = path / "run.json"
    try:
        if accelerator.is_main_process:
            if path.exists() and not run_file.is_file() and any(path.iterdir()):
                raise OutputExistsError(f"{path} exists, is not empty and is not a compare run folder (no run.json); "
                                        "choose a new or empty folder")
            if run_file.is_file() and _read_run(run_file) != _jsonable(request):
                if not force:
                    raise OutputExistsError(f"{path} holds a different compare run (run.json differs); pass force=True "
                                            "(--force) to replace it, or choose another folder")
                clear_run(path)
            path.mkdir(parents=True, exist_ok=True)
            write_json(run_file, request)
        accelerator.wait_for_everyone()
        yield path
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


RUN_FILES = ("comparison.json", "report.md", "bits_per_character.png", "train_loss.png")


def _read_run(run_file: Path) -> Any:
    try:
        return json.loads(run_file.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        return None  # unreadable: a different run


def clear_run(path: Path) -> None:
    """Remove what a compare run wrote into ``path``: its files and the folders of the strategies its run.json
    names. The user's own files in the folder stay."""
    old = _read_run(path / "run.json")
    names = old.get("strategies", []) if isinstance(old, dict) else []
    for name in names if isinstance(names, list) else []:
        try:
            folder = path / folder_name(StrategyPair.parse(str(name)))
        except InvalidInputError:
            continue  # not a strategy name, so not a folder this project wrote
        if folder.is_dir():
            shutil.rmtree(folder)
    for name in RUN_FILES:
        (path / name).unlink(missing_ok=True)
    (path / "run.json").unlink()


def _jsonable(data: Any) -> Any:
    """Plain JSON data (dataclass options as dicts), as it reads back from run.json."""
    return json.loads(json.dumps(data, default=lambda o: dataclasses.asdict(o) if dataclasses.is_dataclass(o) else o))


def folder_name(pair: StrategyPair) -> str:
    return pair.name.replace("/", "__")


def training_data(plan, tokenizer, corpus: Corpus, config: TrainConfig) -> TrainingData:
    """The packed train split and the held-out sample, both in the expanded tokenization."""
    separator = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else start_token_id(tokenizer)
    ids = plan.tokenizer(corpus.train, add_special_tokens=False)["input_ids"]
    docs = heldout_sample(corpus, tokenizer, config.eval_tokens)
    return TrainingData(rows=pack(ids, config.seq_len, separator),
                        heldout=plan.tokenizer(docs, add_special_tokens=False)["input_ids"],
                        characters=sum(len(d) for d in docs), start_id=start_token_id(tokenizer),
                        first_new=plan.tokens_before, vocabulary=plan.tokens_before + len(plan.entries),
                        first_pieces=[p[0] for p in plan.pieces])


def _run_strategy(model, plan, pair, resolved, corpus, data, config, options, folder: RunFolder, accelerator,
                  progress) -> str:
    """Expand and fine-tune one strategy, resuming from its checkpoint; skipped when already finished.
    ``resolved``: the pair's resolved expansion config and its checked strategies."""
    if folder.finished():
        return "finished"
    if folder.step():
        # The checkpoint restores every weight: rebuild only the shapes (and tie) cheaply.
        tied = json.loads((folder.path / "config.json").read_text())["expansion"]["tied"]
        shapes = ExpandConfig(input_init="zeros", output_init="zeros" if tied else "mean",
                             tie_policy="output" if tied else "untie", **_without_strategies(options))
        expansion = apply_plan(model, plan, shapes)
    else:
        expansion = grow_model(model, plan, *resolved, corpus.train, progress=progress)
        if accelerator.is_main_process:
            folder.path.mkdir(parents=True, exist_ok=True)
            write_json(folder.path / "config.json", {"strategy": pair.name, "train": config.to_dict(),
                                                     "rates": config.rates(), "expansion": expansion.report})
        accelerator.wait_for_everyone()
    status = train_run(expansion.model, data, config, folder, accelerator, progress=progress, desc=pair.name)
    if config.save_final and status == "finished" and accelerator.is_main_process:
        final = folder.path / "final"
        if final.exists():
            shutil.rmtree(final)
        expansion.model = accelerator.unwrap_model(expansion.model)
        expansion.save(final)
    accelerator.free_memory()
    return status


def _without_strategies(options: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in options.items() if k not in ("input_init", "output_init", "tie_policy")}


def collect(runs: Path, pairs: list[StrategyPair], label: str, status: dict[str, str], request: dict) -> Comparison:
    """A Comparison from the strategy folders' metrics, with steps-to-target against hf_default (or the first)."""
    evaluations, losses = {}, {}
    for pair in pairs:
        records = RunFolder(runs / folder_name(pair)).records()
        evaluations[pair.name] = [r for r in records if "bits_per_character" in r]
        losses[pair.name] = [r for r in records if "train_loss" in r]
    reference = REFERENCE if REFERENCE in evaluations else pairs[0].name
    final = evaluations[reference][-1]["bits_per_character"] if evaluations[reference] else None
    steps = {name: next((r["step"] for r in records if final is not None and r["bits_per_character"] <= final), None)
             for name, records in evaluations.items()}
    return Comparison(label, evaluations, losses, status, request, reference, final, steps)
