"""The one place where expansion defaults are defined, with the choices and help text the CLI reads.

Every default carries its reason, and its help text lives once, in the field's metadata (`help=`): the CLI
builds its options from these fields, so the library and the command line can never disagree. The full config
is saved next to every output (expansion.json).

Options of one strategy are that strategy's own typed dataclass (`Strategy.options_class`, e.g. DistillOptions
in strategies/distill/), kept per strategy name in `strategy_options`; options shared by every data-driven
strategy (the domain-text sample) are `SamplingOptions`. The historic flat names (`distill_max_windows`,
`fit_reg`, `cov_scale`, ...) still work as keyword arguments and attributes: ALIASES routes each one.

config is the bottom layer: it imports no other part of the package but errors.py and options.py. The strategy
registry (strategies/base.py) hands it the lookup of a strategy's options class (`use_options_lookup`), which the
typed options and the flat aliases need; `vocab_expand.ExpandConfig` loads the registry with it.

Left out: anything about loading, diagnosis or training; those have their own options.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from dataclasses import InitVar, dataclass, field
from typing import Any, Callable, Literal, get_args

from .errors import InvalidInputError, InvalidTypeError
from .options import check_choice, check_int, check_seed, doc, opt

WordForms = Literal["mid", "initial", "both"]
TiePolicy = Literal["auto", "output", "input", "untie"]
TokenKind = Literal["vocab", "added"]
# The choices of `forms` (families.FORMS_OF says which word forms each adds).
FORM_CHOICES: tuple[str, ...] = get_args(WordForms)
DEFAULT_FORMS = "mid"
TIE_POLICIES: tuple[str, ...] = get_args(TiePolicy)
TOKEN_KINDS: tuple[str, ...] = get_args(TokenKind)


# Smallest sample_max_positions: four chunks of 256 tokens. With fewer, the sample can hold no anchor at all, or
# none in the calibration slice (measured: 1, 10 and 100 failed on kjv, with an IndexError or "give more text").
MIN_SAMPLE_POSITIONS = 1024


@dataclass(frozen=True)
class SamplingOptions:
    """The domain-text sample every data-driven strategy learns from (sampling.py)."""

    # Cap on positions of domain text run through the model and cached (hidden states, P x d floats). None: what
    # min_sampled_occurrences per word costs, between 24,576 and 131,072 (sampling.py); 24k is about a minute
    # of forward passes for SmolLM2 on 2 CPU cores and 55 MB of states.
    max_positions: int | None = opt(None, "fit/distill: cap on positions of domain text run and cached (memory "
                                          "and time; default: what 8 occurrences per word cost, between 24,576 "
                                          "and 131,072)")
    # Share of the sampled training documents kept aside to choose fit_reg and stop distillation early.
    calibration_fraction: float = opt(0.2, "fit/distill: share of the sample kept aside for calibration")
    # Expected occurrences per word in the sample: rare words are sampled more often (and weighted down).
    min_sampled_occurrences: int = opt(8, "fit/distill: expected occurrences of each word in the sample")
    # Words seen fewer times than this in the fitting part of the sample keep the fallback rows.
    min_occurrences: int = opt(2, "fit/distill: words seen fewer times keep their starting rows")

    def __post_init__(self) -> None:
        if self.max_positions is not None:  # below this, the sample may hold no text to fit or calibrate on
            check_int("sample_max_positions", self.max_positions, minimum=MIN_SAMPLE_POSITIONS)
        check_int("min_sampled_occurrences", self.min_sampled_occurrences, minimum=1)
        check_int("min_occurrences", self.min_occurrences, minimum=0)
        if not 0.0 < self.calibration_fraction < 1.0:
            raise InvalidInputError(f"calibration_fraction must be between 0 and 1, got {self.calibration_fraction}")


class _Unset:
    """The default of an alias keyword: "not given" (None is a meaningful value for some options)."""

    def __repr__(self) -> str:
        return "UNSET"


UNSET: Any = _Unset()

# Flat historic names -> (where the option lives: "sampling" or a strategy name, field name).
ALIASES: dict[str, tuple[str, str]] = {
    "sample_max_positions": ("sampling", "max_positions"),
    "calibration_fraction": ("sampling", "calibration_fraction"),
    "min_sampled_occurrences": ("sampling", "min_sampled_occurrences"),
    "min_occurrences": ("sampling", "min_occurrences"),
    "fit_reg": ("fit", "reg"),
    "distill_contexts": ("distill", "contexts"),
    "distill_context_tokens": ("distill", "context_tokens"),
    "distill_window": ("distill", "window"),
    "distill_epochs": ("distill", "epochs"),
    "distill_max_windows": ("distill", "max_windows"),
    "distill_cache_budget": ("distill", "cache_budget"),
    "cov_scale": ("mean_cov", "scale"),
}


@dataclass(frozen=True)
class ExpandConfig:
    """Options of :func:`vocab_expand.expand`."""

    # "auto": with domain text, distill/fit (measured: held-out bits per character at or below the original
    # model's, BENCHMARKS.md); without, subword (FVT: the mean of the word's old pieces keeps what the model
    # knew) and mean (safety: KL(old || new) <= log(1 + k/n) on any model, Hewitt).
    input_init: str = opt("auto", "input rows (auto: distill with a corpus, subword without)")
    output_init: str = opt("auto", "output rows (auto: fit with a corpus, mean without)")
    # Every random step is seeded: the same seed gives the same bytes.
    seed: int = opt(0, "seed of every random step")
    # None keeps the smallest row count; a multiple such as 64 helps tensor cores.
    pad_to_multiple_of: int | None = opt(None, "round the row count up to a multiple of this")
    # "mid" (" word") is the form that occurs in running text; "both" adds the sentence-initial form too.
    forms: WordForms = opt(DEFAULT_FORMS, "word forms to add: ' word' (mid), 'word' (initial) or both",
                           choices=FORM_CHOICES)
    # Tied models have one row per token. When the two strategies differ, the output strategy sets it
    # ("output"), because the output row is what decides whether the model's distribution survives.
    # "auto" does that too, and keeps the model tied when a strategy learns from text: the shared row is then
    # `joint`, fitted against both signals (measured: within 0.3 points of the untied distill/fit without its
    # head copy, BENCHMARKS.md). "untie" gives the head its own matrix (28M more parameters on SmolLM2).
    tie_policy: TiePolicy = opt("auto", "tied models: which strategy sets the shared row, or untie; auto keeps "
                                        "them tied and learns the shared row with joint when given text",
                                choices=TIE_POLICIES)
    # "vocab": real vocabulary entries, spaces kept. "added": tokenizer added tokens (control strings).
    kind: TokenKind = opt("vocab", "vocab: real vocabulary entries (words); added: added tokens (control "
                                   "strings)", choices=TOKEN_KINDS)
    # Vocab mode: turn unused reserved tokens (Llama 3's <|reserved_special_token_N|>) into the new words in
    # place. Off by default: it rewrites rows the model already has, which users should choose knowingly.
    reuse_reserved: bool = opt(False, "vocab mode: turn unused reserved tokens (<|reserved_special_token_N|>) "
                                      "into the new words in place, without growing the matrices")
    # Vocab mode, BPE only: reach the words by merge chains too, so engines without ignore_merges (llama.cpp
    # outside the Llama 3 family) tokenize them. Off by default: the chains' intermediate pieces can coarsen
    # other text (measured in BENCHMARKS.md, "Serving"), which breaks "text without the words is unchanged".
    portable: bool = opt(False, "vocab mode, BPE: also reach the words by appended merge chains, so that llama.cpp "
                                "(GGUF) tokenizes them; may coarsen a little other text (see README, Serving)")
    # Added-token mode only: never special by default, since servers skip special tokens when decoding.
    special: bool = opt(False, "added-token mode: special")
    # Added-token mode only, the flags tokenizers know. Control strings match the raw text exactly by default.
    lstrip: bool = opt(False, "added-token mode: lstrip")
    rstrip: bool = opt(False, "added-token mode: rstrip")
    single_word: bool = opt(False, "added-token mode: single_word")
    normalized: bool = opt(False, "added-token mode: normalized")
    # Leave the caller's model and tokenizer untouched unless asked.
    inplace: bool = opt(False, "modify the given model and tokenizer instead of copies", cli=False)
    # The sample of domain text shared by the data-driven strategies.
    sampling: SamplingOptions = field(default_factory=SamplingOptions, metadata=doc("", cli=False))
    # Typed options per strategy name (Strategy.options_class); a strategy not listed uses its defaults.
    strategy_options: dict[str, Any] = field(default_factory=dict, hash=False, metadata=doc("", cli=False))
    # Flat aliases of options that live in `sampling` or in a strategy's options (see ALIASES). Keyword-only
    # in spirit: pass them by name.
    sample_max_positions: InitVar[Any] = UNSET
    calibration_fraction: InitVar[Any] = UNSET
    min_sampled_occurrences: InitVar[Any] = UNSET
    min_occurrences: InitVar[Any] = UNSET
    fit_reg: InitVar[Any] = UNSET
    distill_contexts: InitVar[Any] = UNSET
    distill_context_tokens: InitVar[Any] = UNSET
    distill_window: InitVar[Any] = UNSET
    distill_epochs: InitVar[Any] = UNSET
    distill_max_windows: InitVar[Any] = UNSET
    distill_cache_budget: InitVar[Any] = UNSET
    cov_scale: InitVar[Any] = UNSET

    def __post_init__(self, *given: Any) -> None:
        if self.pad_to_multiple_of is not None:
            if isinstance(self.pad_to_multiple_of, bool) or not isinstance(self.pad_to_multiple_of, int):
                raise InvalidTypeError(
                    f"pad_to_multiple_of must be a positive int or None, got {self.pad_to_multiple_of!r}"
                )
            if self.pad_to_multiple_of <= 0:
                raise InvalidInputError(f"pad_to_multiple_of must be positive, got {self.pad_to_multiple_of}")
        check_choice("forms", self.forms, FORM_CHOICES)
        check_choice("tie_policy", self.tie_policy, TIE_POLICIES)
        check_choice("kind", self.kind, TOKEN_KINDS)
        if self.kind == "added" and self.forms != DEFAULT_FORMS:  # added tokens match the raw text: no forms
            raise InvalidInputError(f"forms={self.forms!r} applies to vocabulary entries (kind='vocab'); added tokens "
                                    "match the raw text exactly, so leave out forms (--forms) with kind='added'")
        if self.kind == "added" and self.portable:
            raise InvalidInputError("portable applies to vocabulary entries (kind='vocab'): added tokens are matched "
                                    "in the raw text, which llama.cpp does too; leave out portable (--portable)")
        check_seed(self.seed)
        routed = {name: value for name, value in zip(_ALIAS_ARGS, given) if value is not UNSET}
        if routed:
            self._route(routed)
        for name, options in self.strategy_options.items():
            _check_options(name, options)

    def _route(self, flat: dict[str, Any]) -> None:
        """Put flat alias values where they live (a frozen dataclass sets its own fields once, here)."""
        by_place: dict[str, dict[str, Any]] = {}
        for name, value in flat.items():
            place, attribute = ALIASES[name]
            by_place.setdefault(place, {})[attribute] = value
        if "sampling" in by_place:
            object.__setattr__(self, "sampling", dataclasses.replace(self.sampling, **by_place.pop("sampling")))
        options = dict(self.strategy_options)
        for place, values in by_place.items():
            options[place] = dataclasses.replace(self.options_for(place), **values)
        object.__setattr__(self, "strategy_options", options)

    def options_for(self, strategy: str) -> Any:
        """The typed options of ``strategy``: the ones given, else its options class's defaults (None if it has
        no options)."""
        if strategy in self.strategy_options:
            return self.strategy_options[strategy]
        options_class = options_class_of(strategy)
        return options_class() if options_class is not None else None

    def to_dict(self) -> dict[str, Any]:
        """Every option as plain JSON data, flat names included (expansion.json)."""
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.name not in ("sampling", "strategy_options")}
        data["sampling"] = dataclasses.asdict(self.sampling)
        data["strategy_options"] = {name: dataclasses.asdict(o) for name, o in sorted(self.strategy_options.items())}
        data.update({name: getattr(self, name) for name in ALIASES})
        return data

    def resolved(self, has_text: bool) -> "ExpandConfig":
        """This config with "auto" strategies replaced: distill/fit with domain text, subword/mean without."""
        auto = AUTO_WITH_TEXT if has_text else AUTO_WITHOUT_TEXT
        return dataclasses.replace(
            self,
            input_init=auto[0] if self.input_init == AUTO else self.input_init,
            output_init=auto[1] if self.output_init == AUTO else self.output_init,
        )


def _alias_property(name: str) -> property:
    place, attribute = ALIASES[name]

    def read(self: ExpandConfig) -> Any:
        holder = self.sampling if place == "sampling" else self.options_for(place)
        return getattr(holder, attribute)

    read.__doc__ = f"Alias of {place}.{attribute}."
    return property(read)


# The InitVar aliases in the order dataclasses passes them to __post_init__ (their order in the class body).
_ALIAS_ARGS = [name for name in inspect.signature(ExpandConfig.__init__).parameters if name in ALIASES]

for _name in ALIASES:  # read access to the flat names (the InitVar defaults above are only for __init__)
    setattr(ExpandConfig, _name, _alias_property(_name))


def _check_options(name: str, options: object) -> None:
    """A strategy's options must be an instance of its options class (typed, validated by its __post_init__)."""
    expected = options_class_of(name)
    if expected is None or not isinstance(options, expected):
        wanted = expected.__name__ if expected else "no options"
        raise InvalidTypeError(f"strategy_options[{name!r}] must be a {wanted}, got {type(options).__name__}")
    flat = {where: alias for alias, where in ALIASES.items()}
    for spec in dataclasses.fields(options):  # inf and nan are no one's meaningful setting: refused for all
        value = getattr(options, spec.name)
        if isinstance(value, float) and not math.isfinite(value):
            option = flat.get((name, spec.name), f"{name}_{spec.name}")
            raise InvalidInputError(f"{option} must be a finite number, got {value} "
                                    f"(--{option.replace('_', '-')})")


def alias_help(name: str) -> tuple[Any, str]:
    """(default, help text) of a flat alias, read from the field it routes to."""
    place, attribute = ALIASES[name]
    holder_class = SamplingOptions if place == "sampling" else options_class_of(place)
    spec = {f.name: f for f in dataclasses.fields(holder_class)}[attribute]
    return spec.default, spec.metadata.get("help", "")


# The options class of a strategy by name (None: it has none); set by the registry (strategies/base.py).
_options_lookup: Callable[[str], type | None] | None = None


def use_options_lookup(lookup: Callable[[str], type | None]) -> None:
    """Called once by the strategy registry: ``lookup(name)`` gives the options class of a registered strategy
    (None if it has none) and raises InvalidInputError for an unknown name."""
    global _options_lookup
    _options_lookup = lookup


def options_class_of(strategy: str) -> type | None:
    """The options class of the registered ``strategy`` (None if it has none)."""
    if _options_lookup is None:
        raise InvalidInputError(f"no strategy is registered yet, so {strategy!r} options cannot be read: import "
                                "vocab_expand.strategies first (vocab_expand.ExpandConfig does)")
    return _options_lookup(strategy)


AUTO = "auto"
AUTO_WITH_TEXT = ("distill", "fit")
AUTO_WITHOUT_TEXT = ("subword", "mean")
# The shared row of a tied model under tie_policy="auto" when a strategy learns from text.
SHARED_WITH_TEXT = "joint"
DEFAULTS = ExpandConfig()
