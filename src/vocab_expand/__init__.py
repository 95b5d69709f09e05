"""vocab-expand: add domain words to a pretrained causal LM without breaking it, and show that it did not.

Public API: load_model, load_corpus, mine, expand, STRATEGIES (and the types they return).
"""

from .config import DEFAULTS, ExpandConfig
from .corpus import Corpus, load_corpus
from .expansion import Expansion, expand, hewitt_bound
from .families import UnsupportedTokenizerError
from .io import OutputExistsError
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
    "ExpandConfig",
    "Expansion",
    "OutputExistsError",
    "RowRequest",
    "Skipped",
    "Strategy",
    "UnsupportedTokenizerError",
    "expand",
    "get_strategy",
    "hewitt_bound",
    "load_corpus",
    "load_model",
    "mine",
    "register_strategy",
]
