# Two commands for a fresh machine: `make demo` and `make test`. Everything else is a step they use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DISTRIBUTIONS := -e . -e backends/torch -e backends/gguf -e integrations/langchain

.PHONY: install test lint typecheck unit demo clean

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
	$(BIN)/mypy diffusiongemma_sdk

unit: install
	$(BIN)/pytest

test: lint typecheck unit

demo: install
	@echo "make demo runs the bundled demo model once it lands (issue: 'Bundled demo model and make demo')."
	@echo "Until then, use a remote backend: see README.md, Quick start."

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
