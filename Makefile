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
# The guard functions make mutate mutates (mutmut's mutant names; docs/mutation.md). The files
# they live in and the tests run against them are set in pyproject.toml's [tool.mutmut].
MUTATE ?= "har_bench.data.splits.x_check_disjoint__*" "har_bench.data.splits.x_standardise__*" \
	"har_bench.data.splits.x_split_report__*" "har_bench.data.splits.x_overlapping_windows__*" \
	"har_bench.data.splits.x_assert_clean__*" "har_bench.data.splits.x__hold_out_validation__*" \
	"har_bench.data.splits.x__from_test_subjects__*" \
	"har_bench.core.metrics.x_classification_metrics__*" "har_bench.core.metrics.x_macro_f1__*" \
	"har_bench.core.metrics.x__present__*" "har_bench.core.metrics.x_confusion_counts__*" \
	"har_bench.core.metrics.x_row_normalise__*" \
	"har_bench.training.checkpoint.x_save_checkpoint__*" "har_bench.training.checkpoint.x_load_checkpoint__*" \
	"har_bench.training.checkpoint.x_commit_epoch__*" \
	"har_bench.core.fs.*" "har_bench.deploy.report.x_build_report__*" \
	"har_bench.experiment.fit.x_refit__*" "har_bench.experiment.fit.x_record_refit__*" \
	"har_bench.experiment.prepare.xǁPartǁjoined__*"
MUTATE_JOBS ?= 1

.PHONY: help install run test test-fast lint format bench mutate clean

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

UCI_HAR ?= ../shared/data/UCI_HAR

bench: install ## throughput, inference and time-to-accuracy benchmarks (docs/benchmarks.md)
	$(BIN)/python benchmarks/throughput.py --json docs/throughput.json $(BENCH_ARGS)
	$(BIN)/python benchmarks/inference.py $(BENCH_ARGS)
	@if [ -d "$(UCI_HAR)" ]; then \
		$(BIN)/python benchmarks/time_to_accuracy.py --data "$(UCI_HAR)" --json docs/time_to_accuracy.json; \
	else echo "time to accuracy skipped: no UCI-HAR folder at $(UCI_HAR) (make bench UCI_HAR=DIR)"; fi

mutate: install ## mutation testing of the evaluation guards (slow; docs/mutation.md)
	$(BIN)/mutmut run --max-children $(MUTATE_JOBS) $(MUTATE)
	$(BIN)/mutmut results

clean: ## remove the venv and caches (keeps outputs/)
	rm -rf $(VENV) .pytest_cache .ruff_cache mutants
