# Two commands for a fresh machine: `make demo` and `make test`. Everything else is a step they use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DISTRIBUTIONS := -e . -e backends/torch -e backends/gguf -e integrations/langchain

.PHONY: install test lint typecheck unit docs demo clean llama-cpp

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python requirements-dev.txt pyproject.toml backends/*/pyproject.toml integrations/*/pyproject.toml
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt $(DISTRIBUTIONS)
	touch $(STAMP)

install: $(STAMP)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy diffusiongemma_sdk backends/torch/diffusiongemma_torch backends/gguf/diffusiongemma_gguf integrations/langchain/langchain_diffusiongemma

unit: install
	$(BIN)/pytest

# The documentation site (mkdocs-material + mkdocstrings), built strictly: a broken link or reference fails.
docs: install
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict  # not --quiet: it hides the warnings strict counts

test: lint typecheck unit docs

# llama-cpp-python built with a llama.cpp tree carrying PR #24423 (a checkout or a tarball), for gguf: on llama.cpp.
# Built once per machine: the wheel is cached by the tree's content hash (~/.cache/diffusiongemma/llama-cpp).
LLAMA_CPP_SOURCE ?= ../shared/vendor/llama.cpp-pr24423-c3fb97241.tar.gz

llama-cpp: install
	$(BIN)/diffusiongemma build-llama-cpp $(LLAMA_CPP_SOURCE)

DEMO_STAMP := $(VENV)/.demo-installed
DEMO_PROMPT ?= Sort these numbers: 42 7 19 88 3 56

$(DEMO_STAMP): $(BIN)/python requirements-demo.txt pyproject.toml backends/torch/pyproject.toml
	$(BIN)/python -m pip install --quiet -r requirements-demo.txt
	touch $(DEMO_STAMP)

# The main job on the bundled demo model: no key, no GPU, no download.
demo: $(DEMO_STAMP)
	$(BIN)/diffusiongemma generate --backend torch:demo "$(DEMO_PROMPT)"

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache site docs/plots
