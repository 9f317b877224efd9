# har-bench: every target creates .venv and installs the package into it first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch is installed first, only if the venv has none. The default takes PyPI's build, which on
# Linux x86_64 bundles CUDA (several GB) even without a GPU; for the CPU-only build use
#   make install TORCH_SPEC="torch --index-url https://download.pytorch.org/whl/cpu"
TORCH_SPEC ?= torch>=2.2,<3
# Exported and expanded unquoted by the shell with globbing off: words split on spaces (so
# "--index-url URL" reaches pip as two arguments) while <, >, and , stay literal characters.
export TORCH_SPEC
ARGS ?=
PYTEST_ARGS ?=
BENCH_ARGS ?=

.PHONY: help install run test test-fast lint format bench clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'
	@echo '  ARGS="..."        Hydra overrides for make run, e.g. ARGS="model=resnet18 trainer.max_epochs=30"'

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -c "import torch" 2>/dev/null || { set -f; $(BIN)/python -m pip install $$TORCH_SPEC; }
	$(BIN)/python -m pip install -e ".[dev]"
	touch $@

install: $(VENV)/.installed ## create .venv and install har-bench with dev tools

run: install ## train the default experiment (overrides in ARGS)
	$(BIN)/har-bench $(ARGS)

test: install ## the whole test suite (CPU, a few minutes)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

test-fast: install ## the tests not marked slow
	$(BIN)/python -m pytest -q -m "not slow" $(PYTEST_ARGS)

lint: install ## ruff check and format check
	$(BIN)/ruff check har_bench tests benchmarks
	$(BIN)/ruff format --check har_bench tests benchmarks

format: install ## apply ruff's formatting and fixes
	$(BIN)/ruff format har_bench tests benchmarks
	$(BIN)/ruff check --fix har_bench tests benchmarks

bench: install ## inference benchmarks: eager vs ONNX Runtime fp32/int8 (docs/benchmarks.md)
	$(BIN)/python benchmarks/inference.py $(BENCH_ARGS)

clean: ## remove the venv and caches (keeps outputs/)
	rm -rf $(VENV) .pytest_cache .ruff_cache
