"""The `vocab-expand` command line. Each subcommand is a parser builder plus a runner; defaults come from
ExpandConfig and strategy choices from the registry, so neither is defined twice.

Errors that are the user's to fix (the VocabExpandError family: bad input, missing packages, existing or
unwritable outputs, damaged files) print one clear line and exit with status 2, without a traceback; any
other exception is a bug and keeps its traceback. Each runner checks its options and its output location
before it loads anything, so a mistake costs seconds, not a run.

Left out: the work itself (every runner calls the library); parsing words files is here (parse_words).
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
import unicodedata
from pathlib import Path
from typing import Callable, Iterable, Iterator

from .config import (ALIASES, AUTO, AUTO_WITH_TEXT, AUTO_WITHOUT_TEXT, DEFAULTS, FORM_CHOICES, SHARED_WITH_TEXT,
                     ExpandConfig, alias_help)
from .errors import InvalidInputError, MissingResourceError, VocabExpandError
from .io import user_path
from .strategies import STRATEGIES

Runner = Callable[[argparse.Namespace], int]
COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], Runner]]] = {}


def command(name: str, help_text: str) -> Callable:
    """Register a subcommand: the decorated function builds its parser; it returns the runner."""

    def decorate(build: Callable[[argparse.ArgumentParser], Runner]) -> Callable[[argparse.ArgumentParser], Runner]:
        if name in COMMANDS:
            raise ValueError(f"duplicate command {name!r}")
        COMMANDS[name] = (help_text, build)
        return build

    return decorate


# A file written by `vocab-expand mine`: every word line is WORD<TAB>FORM<TAB>COUNT.
MINE_LINE = re.compile(r"^([^\t]+)\t(mid|initial)\t(\d+)$")
# The longest line of a words file, in bytes: a word is a few dozen characters; a longer line is not a word
# list (a binary or UTF-16 file, a file of NULs) and is refused before it is held in memory.
MAX_WORD_LINE_BYTES = 1024
# How much of a bad word an error message shows.
SHOWN_CHARACTERS = 40


def shown(word: str) -> str:
    """``word`` as an error message shows it: escaped, and cut after SHOWN_CHARACTERS characters.
    Example: shown("a\tb") -> "'a\\tb'"; a 10,000-character word -> its first 40 and "... (10000 characters)"."""
    if len(word) <= SHOWN_CHARACTERS:
        return repr(word)
    return f"{word[:SHOWN_CHARACTERS]!r}... ({len(word)} characters)"


def control_character(word: str) -> str | None:
    """The first control or line-separator character of ``word``, or None."""
    return next((ch for ch in word if unicodedata.category(ch) in ("Cc", "Zl", "Zp")), None)


def parse_words(text: str, source: str) -> list[str]:
    """Words from the text of a words file: one a line, split on \\n (and \\r\\n) only, '#' comments, a
    leading BOM dropped. A file whose every word line is WORD<TAB>FORM<TAB>COUNT (as `mine` writes) is a mine
    file and gives its first column; otherwise a tab or other control character inside a word is refused
    with its line number. Example: "Zion\\nNebuchadnezzar\\r\\n" -> ["Zion", "Nebuchadnezzar"]."""
    return words_of_lines(enumerate(text.removeprefix("\ufeff").split("\n"), 1), source)


def words_of_lines(lines: Iterable[tuple[int, str]], source: str) -> list[str]:
    """parse_words on (line number, line) pairs, so that a file can be read as a stream."""
    numbered = [(n, line.removesuffix("\r")) for n, line in lines]
    numbered = [(n, line) for n, line in numbered if line.strip(" ") and not line.lstrip(" ").startswith("#")]
    mined = [MINE_LINE.match(line.strip(" ")) for _, line in numbered]
    if numbered and all(mined):
        return [m.group(1).strip(" ") for m in mined]
    return [checked_word(line, f"{source}:{n}: the word", "give one word a line, without tabs or control characters")
            for n, line in numbered]


def checked_word(word: str, where: str, hint: str) -> str:
    """``word`` without surrounding spaces; InvalidInputError ("WHERE 'word' holds the control character ...;
    HINT") when it holds a control or line-separator character."""
    bad = control_character(word)
    if bad is not None:
        raise InvalidInputError(f"{where} {shown(word)} holds the control character {bad!r}; {hint}")
    return word.strip(" ")


def file_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(number, text) of each line of a UTF-8 words file, read as a stream: a line over MAX_WORD_LINE_BYTES is
    refused when reached, so a binary or NUL-filled file costs neither memory nor a huge message."""
    with path.open("rb") as handle:
        number = 0
        while raw := handle.readline(MAX_WORD_LINE_BYTES + 1):
            number += 1
            if len(raw) > MAX_WORD_LINE_BYTES:
                raise InvalidInputError(f"{path}:{number}: the line is longer than {MAX_WORD_LINE_BYTES} bytes, so "
                                        "not a word; give one word a line (is this a words file, UTF-8 text?)")
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise InvalidInputError(f"{path}:{number}: not UTF-8 text ({err.reason} at byte {err.start})") from err
            yield number, (text.removeprefix("\ufeff") if number == 1 else text).removesuffix("\n")


def given_words(values: list[str]) -> list[str]:
    """Words given with --word: each one word, as it is (a leading '#' included: a --word is never a comment);
    a control character such as a newline is refused, as in a words file."""
    return [checked_word(value, "--word", "give one word per --word (repeat the option for more)") for value in values]


def read_words(args: argparse.Namespace) -> list[str]:
    """Words from --words FILE (see parse_words) and repeated --word."""
    words: list[str] = []
    if getattr(args, "words", None):
        path = user_path(args.words)
        if not path.is_file():
            raise MissingResourceError(f"no words file at {path}")
        words.extend(words_of_lines(file_lines(path), str(path)))
    words.extend(given_words(getattr(args, "word", None) or []))
    if not words:
        raise InvalidInputError("no words given: pass --words FILE (one word a line) or --word WORD (repeatable)")
    return words


def add_words_args(parser: argparse.ArgumentParser, corpus_help: str | None = None) -> None:
    """--words and --word, and --corpus when ``corpus_help`` is given: the inputs every command reads."""
    parser.add_argument("--words", help="file with one word a line")
    parser.add_argument("--word", action="append", help="a word to add (repeatable; never read as a comment)")
    if corpus_help is not None:
        add_corpus_arg(parser, corpus_help)


def add_corpus_arg(parser: argparse.ArgumentParser, corpus_help: str, default: str | None = "kjv") -> None:
    parser.add_argument("--corpus", default=default, help=corpus_help)


def input_paths(args: argparse.Namespace) -> list[str]:
    """Every input of a command that names something on disk (--model, --corpus, --words): no output may be,
    contain or sit inside one of them."""
    given = [getattr(args, name, None) for name in ("model", "corpus", "words")]
    return [path for source in given for path in local_inputs(source)]


def add_model_args(parser: argparse.ArgumentParser) -> None:
    from .loading import BUNDLED, DEFAULT_MODEL

    parser.add_argument(
        "--model", default=DEFAULT_MODEL,
        help=f"bundled alias ({', '.join(BUNDLED)}), model folder, .gguf file or hub id (default: %(default)s)",
    )


def add_device_args(parser: argparse.ArgumentParser) -> None:
    """--device, --dtype and --device-map, for every command that loads a model."""
    from .loading import DEVICE_CHOICES, DTYPE_CHOICES

    group = parser.add_argument_group("where the model runs")
    group.add_argument("--device", default="auto", metavar="|".join(DEVICE_CHOICES),
                       help="auto: CUDA when available, else the CPU (default: %(default)s)")
    group.add_argument("--dtype", default="auto", choices=DTYPE_CHOICES,
                       help="the weights' dtype; auto: bfloat16 on a GPU that supports it, float32 on the CPU. "
                            "Statistics and solves are computed in float32 whatever it is (default: %(default)s)")
    group.add_argument("--device-map", choices=("auto",), default=None,
                       help="auto: spread a model larger than one device over every GPU, then the CPU, then disk "
                            "(Accelerate's big-model dispatch); --device is then not used")


def device_options(args: argparse.Namespace) -> dict:
    """load_model's placement options from parsed arguments, checked before any work (a missing GPU is one
    line, not a traceback after the corpus has loaded)."""
    from .loading import resolve_device, resolve_dtype

    device = resolve_device(args.device if args.device_map is None else "auto")
    resolve_dtype(args.dtype, device)
    return {"device": args.device, "dtype": args.dtype, "device_map": args.device_map}


def add_expand_args(parser: argparse.ArgumentParser, skip: tuple[str, ...] = ()) -> None:
    """Expansion options, generated from ExpandConfig's fields and every strategy's options class: defaults,
    choices and help are read from there, so a new option or strategy needs no change here. ``skip``: fields
    the command sets itself (diagnose and compare choose strategies with --strategies)."""
    group = parser.add_argument_group("expansion options")
    choices = [AUTO, *sorted(STRATEGIES)]
    auto = (f"{AUTO}: {'/'.join(AUTO_WITH_TEXT)} with --corpus ({SHARED_WITH_TEXT} on a tied model's shared row), "
            f"{'/'.join(AUTO_WITHOUT_TEXT)} without")
    for spec in dataclasses.fields(ExpandConfig):
        if spec.metadata.get("cli", True) is False or spec.name in skip:
            continue
        text = spec.metadata.get("help", "")
        if spec.name in ("input_init", "output_init"):
            _add_option(group, spec.name, spec.default, f"{spec.name.split('_')[0]} rows (default: {auto})",
                        choices=choices)
        else:
            _add_option(group, spec.name, spec.default, text, choices=spec.metadata.get("choices"))
    for name in ALIASES:
        default, text = alias_help(name)
        _add_option(group, name, default, text)
    for name, cls in sorted(STRATEGIES.items()):
        if cls.options_class is None or name in {place for place, _ in ALIASES.values()}:
            continue
        for spec in dataclasses.fields(cls.options_class):  # a plug-in strategy's options: --NAME-FIELD
            _add_option(group, f"{name}_{spec.name}", spec.default, spec.metadata.get("help", ""),
                        dest=f"{name}.{spec.name}")


def add_train_args(parser: argparse.ArgumentParser) -> None:
    """compare's fine-tuning options, generated from TrainConfig's fields (defaults, choices, help and the flag
    name where it is not the field's, e.g. --lr for learning_rate)."""
    from .training import TrainConfig

    group = parser.add_argument_group("fine-tuning options")
    for spec in dataclasses.fields(TrainConfig):
        _add_option(group, spec.name, spec.default, spec.metadata.get("help", ""), choices=spec.metadata.get("choices"),
                    flag=spec.metadata.get("flag"))


def _add_option(group, name: str, default, text: str, choices=None, dest: str | None = None,
                flag: str | None = None) -> None:
    """One --flag for a config field: booleans get --flag/--no-flag; numbers are parsed by the default's type."""
    flag = "--" + (flag or name).replace("_", "-")
    dest = dest or name
    help_text = text if "default:" in text else f"{text} (default: %(default)s)".strip()
    if isinstance(default, bool):
        group.add_argument(flag, dest=dest, action=argparse.BooleanOptionalAction, default=default, help=help_text)
    else:
        kind = _number if default is None or isinstance(default, (int, float)) else str
        group.add_argument(flag, dest=dest, type=kind, default=default, choices=choices, help=help_text)


def _number(text: str) -> int | float | None:
    """An int, a float, or "none" for None (options such as --distill-max-windows none: no cap)."""
    if text.lower() == "none":
        return None
    try:
        return int(text)
    except ValueError:
        return float(text)


def expand_config(args: argparse.Namespace) -> ExpandConfig:
    """The ExpandConfig of parsed arguments (plug-in strategies' options included)."""
    names = {f.name for f in dataclasses.fields(ExpandConfig)} | set(ALIASES)
    values = vars(args)
    given = {k: v for k, v in values.items() if k in names}
    plugin: dict[str, dict] = {}
    for key, value in values.items():
        if "." in key:
            strategy, option = key.split(".", 1)
            plugin.setdefault(strategy, {})[option] = value
    if plugin:
        given["strategy_options"] = {name: STRATEGIES[name].options_class(**options)
                                     for name, options in plugin.items()}
    return ExpandConfig(**given)


PAIR_FIELDS = ("input_init", "output_init", "seed", "inplace")


def pair_options(args: argparse.Namespace) -> dict:
    """Expansion options that differ from the defaults, by flat name, for commands that try several strategy
    pairs (diagnose, compare): a run with the defaults records no options, as before."""
    config = expand_config(args)
    names = [f.name for f in dataclasses.fields(ExpandConfig) if f.name not in PAIR_FIELDS + ("sampling",)]
    changed = {name: getattr(config, name) for name in [*names, *ALIASES]
               if name != "strategy_options" and getattr(config, name) != getattr(DEFAULTS, name)}
    plugins = {name: options for name, options in config.strategy_options.items()
               if name not in {place for place, _ in ALIASES.values()}}
    return changed | ({"strategy_options": plugins} if plugins else {})


@command("expand", "add words to a model and save the result")
def build_expand(parser: argparse.ArgumentParser):
    add_model_args(parser)
    add_words_args(parser)
    add_corpus_arg(parser, "domain text for fit/distill (kjv, a .txt/.jsonl file or a folder; its train split is "
                           "used). With it, the default rows are distill/fit (joint on a tied model)", default=None)
    add_device_args(parser)
    add_expand_args(parser)
    parser.add_argument("-o", "--output", required=True, help="output folder (a loadable transformers model)")
    parser.add_argument("--force", action="store_true", help="replace the output folder if it exists")
    parser.add_argument("--allow-empty", action="store_true",
                        help="save the model even when every word was skipped (by default that is an error)")
    parser.add_argument("--load-model", action="store_true",
                        help="build the model in memory even where it is not needed (by default a local safetensors "
                             "folder expanded without --corpus or --dtype by static strategies is rewritten on disk: "
                             "only its embedding and head tensors are read, and its dtype is kept)")

    def run(args: argparse.Namespace) -> int:
        from .checkpoint import expand_checkpoint, holds_safetensors, is_static
        from .io import check_output_dir

        check_output_dir(args.output, args.force, inputs=input_paths(args))  # before any work
        words = read_words(args)
        config = expand_config(args)
        from .rows.policy import check_sides

        check_sides(config.resolved(bool(args.corpus)))
        placement = device_options(args)
        options = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
        # A --dtype asks for the weights converted: that needs the model loaded.
        loaded = args.load_model or args.corpus or args.dtype != "auto"
        if not loaded and holds_safetensors(args.model) and is_static(config):
            result = expand_checkpoint(args.model, words, args.output, force=args.force, allow_empty=args.allow_empty,
                                       progress=True, **options)
            print_summary(result)
            files = result.report["files"]
            print(f"method: checkpoint (the model was not loaded; rewrote {', '.join(files['rewritten'])}, linked "
                  f"{len(files['linked'])} and copied {len(files['copied'])} files)")
        else:
            result = expand_in_memory(args, words, options, placement)
        report = result.report
        print(f"saved to {args.output}; parameters {report['parameters_before']:,} -> {report['parameters_after']:,} "
              f"(+{report['parameters_added']:,}, {'tied' if report['tied'] else 'untied'})")
        from .serving import serving_warnings

        for line in serving_warnings(report.get("serving")):
            print(f"warning: {line}")
        return 0

    return run


def expand_in_memory(args: argparse.Namespace, words: list[str], options: dict, placement: dict):
    """`expand` on the loaded model (any source, any strategy), saved to args.output; returns the Expansion."""
    from .corpus import load_corpus
    from .expansion import expand
    from .loading import load_model
    from .report import with_source

    corpus = load_corpus(args.corpus) if args.corpus else None
    model, tokenizer = load_model(args.model, **placement)
    result = expand(model, tokenizer, words, corpus=corpus, progress=True, **options | {"inplace": True})
    result.report = with_source(result.report, model=args.model, corpus=args.corpus)
    print_summary(result)
    weights = model.get_input_embeddings().weight
    print(f"method: model (loaded in {str(weights.dtype).removeprefix('torch.')} on {weights.device} and expanded there)")
    result.save(args.output, force=args.force, allow_empty=args.allow_empty, inputs=input_paths(args))
    return result


def local_inputs(source: str | None) -> list[str]:
    """A --model, --corpus or --words argument when it names something on disk, which no output may overlap."""
    return [source] if source and (user_path(source).exists() or user_path(source).is_symlink()) else []


def print_summary(result) -> None:
    """What was added, what was skipped and why, and the words that kept fallback rows (too rare in the text)."""
    report = result.report
    print(f"added {len(result.new_tokens)} tokens ({report['input_strategy']} input rows, "
          f"{report['output_strategy']} output rows); skipped {len(result.skipped)}")
    for skip in result.skipped:
        print(f"  skipped {skip.word!r}: {skip.reason}")
    for side, facts in report.get("data_driven", {}).items():
        fallback = facts.get("fallback_words", []) if isinstance(facts, dict) else []
        if fallback:
            print(f"  {side}: {len(fallback)} words too rare in the text keep their fallback rows: {', '.join(fallback)}")


@command("compare", "fine-tune with each initialization and show which adapts fastest")
def build_compare(parser: argparse.ArgumentParser):
    from .experiments import DEFAULT_COMPARE
    from .training import TrainConfig

    add_model_args(parser)
    add_words_args(parser, "kjv, a .txt/.jsonl file or a folder (default: %(default)s)")
    parser.add_argument("--strategies", default=",".join(DEFAULT_COMPARE), help="comma-separated NAME or INPUT/OUTPUT "
                        "(default: %(default)s)")
    parser.add_argument("--twin", action="store_true", help="run on the model's negative-logit twin")
    add_train_args(parser)
    parser.add_argument("-o", "--output", required=True, help="RUNS folder (rerunning the same command resumes)")
    parser.add_argument("--force", action="store_true", help="replace a folder that holds a different run")
    add_device_args(parser)
    add_expand_args(parser, skip=PAIR_FIELDS)

    def run(args: argparse.Namespace) -> int:
        from .experiments import compare

        from .experiments import check_runs_folder

        check_runs_folder(user_path(args.output), input_paths(args))  # the words file too, before any work
        train = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig) if hasattr(args, f.name)}
        result = compare(args.model, args.corpus, read_words(args), args.strategies, args.output, twin=args.twin,
                         force=args.force, expand_options=pair_options(args), load_options=device_options(args),
                         **train)
        for name, row in result.summary().items():
            reached = row["steps_to_target"]
            print(f"  {name:14s} bpc {row['bpc_start']:.4f} -> {row['bpc_final']:.4f}  steps to target: "
                  f"{reached if reached is not None else 'not reached'}  ({result.status[name]})")
        print(f"report: {args.output}/report.md")
        return 0

    return run


@command("mine", "find the words worth adding to a model's tokenizer")
def build_mine(parser: argparse.ArgumentParser):
    add_model_args(parser)
    add_corpus_arg(parser, "kjv, a .txt/.jsonl file or a folder (default: %(default)s)")
    parser.add_argument("--top", type=int, default=100, help="how many words (default: %(default)s)")
    parser.add_argument("--min-count", type=int, default=5)
    parser.add_argument("--min-length", type=int, default=3)
    parser.add_argument("--pattern", help="keep only words matching this regex")
    parser.add_argument("--keep-numbers", action="store_true", help="allow words with digits")
    parser.add_argument("--forms", choices=FORM_CHOICES, default=DEFAULTS.forms)
    parser.add_argument("-o", "--output", help="words file to write (one word a line)")
    parser.add_argument("--force", action="store_true")

    def run(args: argparse.Namespace) -> int:
        from .corpus import load_corpus
        from .io import check_output_file
        from .loading import tokenizer_only
        from .mining import check_options, heldout_saving, mine

        check_options(args.top, args.min_count, args.min_length, args.pattern, args.forms)  # before any work
        if args.output:
            check_output_file(args.output, args.force, inputs=input_paths(args))
        tokenizer = tokenizer_only(args.model)
        corpus = load_corpus(args.corpus)
        found = mine(tokenizer, corpus, args.top, min_count=args.min_count, min_length=args.min_length,
                     pattern=args.pattern, exclude_numbers=not args.keep_numbers, forms=args.forms)
        if not found:  # a run that finds nothing says so, and writes no empty words file
            raise InvalidInputError(f"found no word in {args.corpus} worth adding (seen at least {args.min_count} times, "
                                    f"at least {args.min_length} characters, split into 2 or more tokens); lower "
                                    "--min-count or --min-length, or give more text")
        print(f"{'word':<20} {'form':<8} {'count':>7} {'pieces':>6} {'saved':>7}")
        for c in found:
            print(f"{c.word:<20} {c.form:<8} {c.count:>7} {c.pieces:>6} {c.tokens_saved:>7}")
        saving = heldout_saving(tokenizer, corpus, found)
        print(f"held-out split: {saving['tokens_saved']} of {saving['heldout_tokens']} tokens saved "
              f"({saving['percent_saved']:.2f}%)")
        if args.output:
            from .io import write_text_atomic

            write_text_atomic(args.output, "".join(f"{c.word}\t{c.form}\t{c.count}\n" for c in found), force=args.force)
            print(f"wrote {len(found)} words to {args.output}")
        return 0

    return run


@command("diagnose", "measure what expansion does to a model: KL, moved probability, risk, bits per character")
def build_diagnose(parser: argparse.ArgumentParser):
    from .diagnostics import DEFAULT_STRATEGIES, MAX_TOKENS

    add_model_args(parser)
    add_words_args(parser, "kjv, a .txt/.jsonl file or a folder (default: %(default)s)")
    parser.add_argument("--strategies", default=",".join(DEFAULT_STRATEGIES),
                        help=f"comma-separated NAME or INPUT/OUTPUT; names: {', '.join(sorted(STRATEGIES))} "
                             "(default: %(default)s)")
    parser.add_argument("--max-tokens", type=int, default=MAX_TOKENS, help="held-out tokens scored (default: %(default)s)")
    parser.add_argument("--twin", action="store_true", help="also diagnose the model's negative-logit twin")
    parser.add_argument("--no-generate", action="store_true", help="skip the generations")
    parser.add_argument("--seed", type=int, default=DEFAULTS.seed)
    parser.add_argument("-o", "--output", required=True, help="report folder")
    parser.add_argument("--force", action="store_true")
    add_device_args(parser)
    add_expand_args(parser, skip=PAIR_FIELDS)

    def run(args: argparse.Namespace) -> int:
        from .corpus import load_corpus
        from .diagnostics import check_max_tokens, diagnose
        from .options import check_seed
        from .pairs import parse_strategies
        from .io import atomic_directory, check_output_dir
        from .loading import load_model
        from .report import table, write_into

        check_output_dir(args.output, args.force, inputs=input_paths(args))
        check_max_tokens(args.max_tokens)
        check_seed(args.seed)
        words = read_words(args)
        pairs = [p.name for p in parse_strategies(args.strategies)]
        placement = device_options(args)
        corpus = load_corpus(args.corpus)
        model, tokenizer = load_model(args.model, **placement)
        options = dict(max_tokens=args.max_tokens, seed=args.seed, generate=not args.no_generate,
                       **pair_options(args))
        found = [diagnose(model, tokenizer, words, corpus, pairs, label=args.model, **options)]
        if args.twin:
            from .twin import negative_logit_twin

            twin = negative_logit_twin(model, tokenizer, corpus)
            found.append(diagnose(twin, tokenizer, words, corpus, pairs, label=f"{args.model} twin", **options))
        with atomic_directory(args.output, force=args.force, inputs=input_paths(args)) as tmp:
            write_into(found[0], tmp)
            if args.twin:
                (tmp / "twin").mkdir()
                write_into(found[1], tmp / "twin")
        for diagnosis in found:
            absent = diagnosis.figures["words_absent_from_heldout"]
            if absent:
                print(f"{len(absent)} words never occur in the held-out split: {', '.join(absent)}")
            if "bpc_note" in diagnosis.figures:
                print(f"bits per character {diagnosis.figures['bpc_note']}")
            print(table(diagnosis))
            for row in diagnosis.strategies.values():
                print("  " + row["verdict"])
        print(f"report: {args.output}/report.md")
        return 0

    return run


@command("export", "write a GGUF for llama.cpp/Ollama through llama.cpp's own converter, and check it in llama.cpp")
def build_export(parser: argparse.ArgumentParser):
    from .engines import OUTTYPES
    from .gguf_export import DEFAULT_MAX_TEXTS

    parser.add_argument("folder", help="an expanded or fine-tuned and merged model folder")
    parser.add_argument("-o", "--output", required=True, help="the .gguf file to write")
    parser.add_argument("--outtype", choices=OUTTYPES, default="f16",
                        help="tensor type of the file (default: %(default)s)")
    parser.add_argument("--check", action="store_true",
                        help="load the file in real llama.cpp and compare token ids, new words and greedy text with "
                             "the folder; exits non-zero if they differ (figures in OUTPUT.check.json)")
    parser.add_argument("--corpus", default="kjv", help="whose held-out split --check tokenizes (default: %(default)s)")
    parser.add_argument("--max-texts", type=int, default=DEFAULT_MAX_TEXTS,
                        help="held-out documents --check compares (default: %(default)s)")
    parser.add_argument("--force", action="store_true", help="replace the output file if it exists")

    def run(args: argparse.Namespace) -> int:
        from .gguf_export import export

        result = export(args.folder, args.output, outtype=args.outtype, force=args.force, check=args.check,
                        corpus=args.corpus, max_texts=args.max_texts)
        print(f"wrote {result.gguf} ({result.outtype}) in {result.seconds:.1f} s")
        if result.warning and not result.check:
            print(f"warning: {result.warning}", file=sys.stderr)
        if result.check:
            print(result.check["verdict"])
        return 0

    return run


@command("demo", "the main job: mine words from a corpus, expand the model, show generations before and after")
def build_demo(parser: argparse.ArgumentParser):
    add_model_args(parser)
    parser.add_argument("--corpus", default="kjv")
    parser.add_argument("--top", type=int, default=20, help="words to mine and add (default: %(default)s)")
    parser.add_argument("--max-tokens", type=int, default=4000, help="held-out tokens diagnosed (default: %(default)s)")
    parser.add_argument("-o", "--output", default="runs/demo", help="output folder (default: %(default)s)")
    parser.add_argument("--force", action="store_true")
    add_device_args(parser)

    def run(args: argparse.Namespace) -> int:
        from .demo import run_demo
        from .diagnostics import check_max_tokens
        from .io import check_output_dir
        from .mining import check_options

        check_max_tokens(args.max_tokens)
        check_options(args.top, 1, 1, None, DEFAULTS.forms)
        check_output_dir(args.output, args.force, inputs=input_paths(args))
        return run_demo(args.model, args.corpus, args.top, args.output, args.force, max_tokens=args.max_tokens,
                        load_options=device_options(args))

    return run


USER_HELP = """Add domain words to a causal language model as single, real vocabulary tokens, with embedding rows
that keep the model working, and measure that it still does (KL, moved probability, bits per character)."""
USER_EPILOG = """a typical session:
  vocab-expand mine --corpus my-text.txt -o words.txt          # the words that save the most tokens
  vocab-expand diagnose --words words.txt --corpus my-text.txt -o report/
  vocab-expand expand --words words.txt --corpus my-text.txt -o expanded/    # add --portable for llama.cpp
  vocab-expand export expanded/ -o expanded.gguf --check      # GGUF for llama.cpp/Ollama, checked in llama.cpp
  vocab-expand demo                                             # all of it on the bundled model and the KJV

--model takes a bundled alias (smollm2-135m, the default; gemma3-270m), a model folder, a .gguf file or a hub id.
Each command's own --help lists its options."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vocab-expand", description=USER_HELP, epilog=USER_EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (help_text, build) in COMMANDS.items():
        sub_parser = sub.add_parser(name, help=help_text, description=help_text)
        sub_parser.set_defaults(run=build(sub_parser))
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command. Only the project's own errors (the user's to fix) become one line and exit status 2;
    anything else is a bug and keeps its traceback."""
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except VocabExpandError as err:
        print(f"vocab-expand {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
