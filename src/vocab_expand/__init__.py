"""vocab-expand: add domain words to a pretrained causal LM without breaking it, and show that it did not.

Public API: load_model, load_corpus, mine, expand, STRATEGIES (and the types they return).
"""

from .config import DEFAULTS, ExpandConfig
from .corpus import Corpus, load_corpus
from .diagnostics import Diagnosis, diagnose
from .expansion import Expansion, TokenPlan, apply_plan, expand, hewitt_bound, plan_tokens
from .testing import negative_logit_twin
from .errors import (
    InvalidInputError,
    MissingResourceError,
    OutputExistsError,
    OutputNotWritableError,
    UnsupportedTokenizerError,
    VocabExpandError,
)
from .loading import DEFAULT_MODEL, load_model
from .mining import Candidate, mine
from .strategies import STRATEGIES, RowRequest, Strategy, get_strategy, register_strategy
from .tokenization import Skipped

__version__ = "0.1.0"

__all__ = [
    "DEFAULTS",
    "DEFAULT_MODEL",
    "STRATEGIES",
    "Candidate",
    "Corpus",
    "Diagnosis",
    "ExpandConfig",
    "Expansion",
    "InvalidInputError",
    "MissingResourceError",
    "OutputExistsError",
    "OutputNotWritableError",
    "RowRequest",
    "Skipped",
    "Strategy",
    "TokenPlan",
    "UnsupportedTokenizerError",
    "VocabExpandError",
    "apply_plan",
    "diagnose",
    "expand",
    "get_strategy",
    "hewitt_bound",
    "load_corpus",
    "load_model",
    "mine",
    "negative_logit_twin",
    "plan_tokens",
    "register_strategy",
]
