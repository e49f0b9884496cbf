# agentmill: `make demo` runs the main job on the bundled samples, `make test` runs the tests.
# Both set up .venv first: torch (the CPU build) before everything else, the rest pinned
# against it by constraints.txt, so pip never pulls CUDA packages.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.agentmill-installed
PYTEST_ARGS ?=

.PHONY: install demo test lint bench clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[train,dev,bench]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/agentmill run pipelines/demo.yaml --output out/demo
	train/demo.sh out/demo out/demo-model

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: $(STAMP)
	$(BIN)/python -m bench.io
	$(BIN)/python -m bench.train
	$(BIN)/python -m bench.train_vs_trl

clean:
	rm -rf out .pytest_cache
