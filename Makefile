# Two commands set everything up on a fresh clone: `make train` and `make test`.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install train test test-slow test-gpu gpu-check lint clean notebooks

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install "$(TORCH)"
	$(BIN)/pip install -e ".[dev]"
	touch $(STAMP)

train: install
	$(BIN)/python -m seq2seq.train $(ARGS)

# Two pytest-xdist workers, each test file on one worker (module fixtures such as the test server are
# built once), one torch thread each (tests/conftest.py): on 2 cores about 1.7x faster than one process.
TEST_WORKERS ?= 2
test: install
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile $(ARGS)

test-slow: install
	$(BIN)/python -m pytest -m slow $(ARGS)

# The GPU-marked tests (tests/test_gpu.py); they skip where CUDA is absent, also inside `make test`.
test-gpu: install
	$(BIN)/python -m pytest -m gpu $(ARGS)

# GPU readiness in one command (a 540 s budget on one H100/H200, estimated: not yet timed on a GPU): GPU tests, training and decoding
# throughput against the peers, a Multi30k run, ours against CTranslate2 on that run's exported
# weights; writes outputs/gpu_check/report.json and prints the goals table. Build the venv with a
# CUDA torch (make install TORCH=...); CTranslate2's wheels need CUDA 12's cuBLAS (else that part is
# skipped, or runs on a link to torch's cuBLAS: see benchmarks/gpu_check.py). `make gpu-check ARGS=--dry-run` runs the same script on a CPU with tiny sizes (~1 min).
gpu-check: install
	$(BIN)/python benchmarks/gpu_check.py $(ARGS)

# Execute every notebook top to bottom (executed copies in outputs/notebooks/executed; the committed
# files stay without outputs). 02 uses the run of 01; 03 the newest sweep (`make sweep`) or SEQ2SEQ_SWEEP.
notebooks: install
	$(BIN)/python -m seq2seq.utils.notebooks run notebooks/01_quickstart.ipynb notebooks/02_cross_attention.ipynb
	@if [ -n "$$SEQ2SEQ_SWEEP" ] || ls -d outputs/train/multiruns/*/* >/dev/null 2>&1; then \
		$(BIN)/python -m seq2seq.utils.notebooks run notebooks/03_sweep_results.ipynb; \
	else echo "03_sweep_results skipped: no sweep under outputs/train/multiruns (run make sweep, or set SEQ2SEQ_SWEEP=DIR)"; fi

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
