# Two entry points a newcomer needs: `make demo` and `make test`.
# Each creates .venv if missing: the pinned CPU torch first (a plain `torch`
# would pull gigabytes of CUDA wheels), then the package with its test and lm-eval extras.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
TORCH  ?= torch==2.13.0
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export HF_EVALUATE_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup demo test test-slow test-all lint clean

$(BIN)/obliviate: pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[test,lm-eval]"
	touch $(BIN)/obliviate

setup: $(BIN)/obliviate

demo: setup
	$(BIN)/obliviate demo --out runs/demo

test: setup
	$(BIN)/python -m pytest -q -m "not slow"

test-slow: setup
	$(BIN)/python -m pytest -q -m slow

test-all: test test-slow

lint: setup
	$(BIN)/ruff check src tests perf

clean:
	rm -rf runs .pytest_cache build src/*.egg-info
