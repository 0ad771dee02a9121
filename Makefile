# Set-up is part of every target: a fresh clone needs only `make demo` or `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-slow lint bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# The CPU wheel of torch first when none is installed: a plain `torch` pulls a multi-GB CUDA build.
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/study run --trials 30 --subset 0.3

# The default tier: everything but the `slow` tests (about 7.5 min on 2 cores).
test: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow" --durations=5

# The slow tier (whole studies, promote-best, chaos, soak, browser, the GPU check's CPU dry run);
# CI runs it after `make test`.
test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow --durations=10

lint: $(STAMP)
	$(BIN)/ruff check src tests
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python -m benchmarks

clean:
	rm -rf studies/*/study.db* studies/*/mlflow.db studies/*/mlartifacts studies/*/export studies/*/data studies/*/.cache
	rm -rf examples/*/study.db* examples/*/mlflow.db* examples/*/mlruns examples/*/mlartifacts examples/*/export \
		examples/*/promoted examples/*/journal.log* examples/*/.cache examples/*/.scratch
