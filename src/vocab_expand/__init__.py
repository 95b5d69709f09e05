"""vocab-expand: add domain words to a pretrained causal LM without breaking it, and show that it did not.

Public API: load_model, load_corpus, mine, expand, expand_checkpoint (a model folder on disk, static strategies,
without loading the model), diagnose, compare, negative_logit_twin, lora_config (the hand-off to PEFT),
save_model and check_serving (a fine-tuned folder saved, and checked, for the programs that load it), the
strategy registry, and the types they return. Names are imported on first use, so `import vocab_expand` is fast.

Left out: the command line (cli.py) and the internals each module's docstring lists.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# Public name -> the module that defines it.
_EXPORTS = {
    "DEFAULTS": "config", "ExpandConfig": "config", "SamplingOptions": "config",
    "CheckpointExpansion": "checkpoint", "expand_checkpoint": "checkpoint",
    "Corpus": "corpus", "load_corpus": "corpus",
    "Diagnosis": "diagnostics", "diagnose": "diagnostics",
    "Comparison": "experiments", "compare": "experiments",
    "Expansion": "expansion", "apply_plan": "expansion", "expand": "expansion",
    "TokenPlan": "planning", "plan_tokens": "planning",
    "hewitt_bound": "metrics",
    "negative_logit_twin": "twin",
    "lora_config": "handoff",
    "check_serving": "serving", "save_model": "serving",
    "Export": "gguf_export", "export": "gguf_export", "EngineError": "errors",
    "InvalidInputError": "errors", "MissingResourceError": "errors", "OutputExistsError": "errors",
    "OutputNotWritableError": "errors", "UnsupportedTokenizerError": "errors", "VocabExpandError": "errors",
    "CorruptFileError": "errors", "HubUnreachableError": "errors", "InvalidTypeError": "errors",
    "MissingPackageError": "errors", "NothingAddedError": "errors",
    "DEFAULT_MODEL": "loading", "load_model": "loading",
    "Candidate": "mining", "mine": "mining",
    "STRATEGIES": "strategies", "DataDrivenStrategy": "strategies", "Learned": "strategies",
    "RowRequest": "strategies", "Strategy": "strategies", "get_strategy": "strategies",
    "register_strategy": "strategies",
    "Skipped": "tokenization",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'vocab_expand' has no attribute {name!r}")
    if _EXPORTS[name] == "config":  # options name strategies: load the registry, which config itself never imports
        import_module(".strategies", __name__)
    value = getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # for type checkers and IDEs only
    from .checkpoint import CheckpointExpansion, expand_checkpoint
    from .config import DEFAULTS, ExpandConfig, SamplingOptions
    from .corpus import Corpus, load_corpus
    from .diagnostics import Diagnosis, diagnose
    from .errors import (CorruptFileError, HubUnreachableError, InvalidInputError, InvalidTypeError,
                         MissingPackageError, MissingResourceError, NothingAddedError, OutputExistsError,
                         OutputNotWritableError, UnsupportedTokenizerError, VocabExpandError)
    from .expansion import Expansion, apply_plan, expand
    from .errors import EngineError
    from .gguf_export import Export, export
    from .handoff import lora_config
    from .serving import check_serving, save_model
    from .experiments import Comparison, compare
    from .loading import DEFAULT_MODEL, load_model
    from .metrics import hewitt_bound
    from .mining import Candidate, mine
    from .planning import TokenPlan, plan_tokens
    from .strategies import (STRATEGIES, DataDrivenStrategy, Learned, RowRequest, Strategy, get_strategy,
                             register_strategy)
    from .tokenization import Skipped
    from .twin import negative_logit_twin
