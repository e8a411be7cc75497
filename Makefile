# Two commands set everything up on a fresh clone: `make train` and `make test`.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install train test test-slow lint clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install "$(TORCH)"
	$(BIN)/pip install -e ".[dev]"
	touch $(STAMP)

train: install
	$(BIN)/python -m seq2seq.train $(ARGS)

test: install
	$(BIN)/python -m pytest $(ARGS)

test-slow: install
	$(BIN)/python -m pytest -m slow $(ARGS)

lint: install
	$(BIN)/ruff check src tests benchmarks

clean:
	rm -rf outputs multirun .pytest_cache

# A small sweep, then its results table and plot: `make sweep [SWEEP_ARGS="..."] [SWEEP_DIR=DIR]`.
SWEEP_ARGS ?= experiment=toy model/size=tiny,small
.PHONY: sweep
sweep: install
	d="$${SWEEP_DIR:-outputs/train/multiruns/sweep-$$(date +%Y-%m-%d_%H-%M-%S)}" && \
	$(BIN)/python -m seq2seq.train -m "hydra.sweep.dir=$$d" $(SWEEP_ARGS) && \
	$(BIN)/python -m seq2seq.report "$$d"
