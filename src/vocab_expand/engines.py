"""Real llama.cpp, run as separate processes: its own converter (convert_hf_to_gguf.py with its own gguf-py)
and its runtime (the prebuilt CPU binaries of the npm package node-llama-cpp, driven by llama_cpp_driver.mjs).

`make install-engines` puts both into `.cache/engines` of a source checkout; `VOCAB_EXPAND_ENGINES` names
another folder of the same layout (`llama.cpp/convert_hf_to_gguf.py`, `node/node_modules/node-llama-cpp`).
Nothing here converts weights itself: the converter is llama.cpp's, so the GGUF is what its users get.

Left out: what is compared (export.py); installing the engines (the Makefile's install-engines).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Sequence

from .errors import EngineError, MissingPackageError

INSTALL_HINT = "install them with: make install-engines (or set VOCAB_EXPAND_ENGINES to a folder that holds them)"
DRIVER = Path(__file__).with_name("llama_cpp_driver.mjs")
OUTTYPES = ("f32", "f16", "bf16", "q8_0")


def engines_dir() -> Path:
    """$VOCAB_EXPAND_ENGINES, else the source checkout's .cache/engines (where `make install-engines` puts them)."""
    named = os.environ.get("VOCAB_EXPAND_ENGINES")
    return Path(named) if named else Path(__file__).resolve().parents[2] / ".cache" / "engines"


def converter_script() -> Path | None:
    """llama.cpp's convert_hf_to_gguf.py, or None when it is not installed."""
    script = engines_dir() / "llama.cpp" / "convert_hf_to_gguf.py"
    return script if script.is_file() and (script.parent / "gguf-py" / "gguf").is_dir() else None


def runtime_dir() -> Path | None:
    """The folder whose node_modules holds node-llama-cpp, or None when it (or node) is missing."""
    folder = engines_dir() / "node"
    found = (folder / "node_modules" / "node-llama-cpp" / "dist" / "index.js").is_file()
    return folder if found and shutil.which("node") else None


def missing_engines() -> list[str]:
    """Names of the llama.cpp parts that are not installed (empty when both are)."""
    missing = [] if converter_script() else ["llama.cpp's converter (convert_hf_to_gguf.py)"]
    return missing + ([] if runtime_dir() else ["llama.cpp's runtime (node-llama-cpp and node)"])


def require(script_or_dir: Path | None, what: str) -> Path:
    if script_or_dir is None:
        raise MissingPackageError(f"{what} is not installed in {engines_dir()}; {INSTALL_HINT}")
    return script_or_dir


def convert(folder: Path, outfile: Path, outtype: str) -> None:
    """Run llama.cpp's converter on a transformers folder; EngineError with its last error line on failure."""
    script = require(converter_script(), "llama.cpp's converter")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(script.parent / "gguf-py"), *filter(None, [os.environ.get("PYTHONPATH")])]))
    command = [sys.executable, str(script), str(folder), "--outfile", str(outfile), "--outtype", outtype]
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise EngineError(f"llama.cpp's converter refused {folder}: {last_error(done.stderr)}")


def last_error(log: str) -> str:
    """The most telling line of a failed run's log: the last exception line, else the last non-empty line.
    Example: "...\\nNotImplementedError: BPE pre-tokenizer was not recognized\\n" -> that last line."""
    lines = [line.strip() for line in log.splitlines() if line.strip()]
    errors = [line for line in lines if re.match(r"^[A-Za-z_.]*(Error|Exception)\b", line)]
    return (errors or lines or ["no output"])[-1][:400]


def run_llama_cpp(gguf: Path, texts: Sequence[str] = (), generate: Sequence[dict[str, Any]] = (),
                  threads: int = 2) -> dict[str, list[list[int]]]:
    """Token ids of ``texts`` (no special tokens) and greedy continuations in real llama.cpp.

    generate: [{"ids": prompt ids, "n": tokens to generate}]. Returns {"ids": [...], "generated": [...]}.
    """
    folder = require(runtime_dir(), "llama.cpp's runtime")
    request = {"model": str(gguf), "texts": list(texts), "generate": list(generate), "threads": threads}
    with tempfile.NamedTemporaryFile("w", suffix=".json", encoding="utf-8") as handle:
        json.dump(request, handle)
        handle.flush()
        done = subprocess.run(["node", str(DRIVER), str(folder), handle.name], capture_output=True, text=True)
    if done.returncode != 0:
        raise EngineError(f"llama.cpp could not run {gguf}: {last_error(done.stderr)}")
    return json.loads(done.stdout)
