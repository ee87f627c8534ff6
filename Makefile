# Two commands do all set-up on a fresh machine (Python 3.11):
#   make demo   set up, then run the demo end to end on CPU
#   make test   set up, then run the tests
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE := 1

.PHONY: demo test setup clean

$(BIN)/prefixrl: pyproject.toml requirements-cpu.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements-cpu.txt   # CPU torch first: no CUDA packages
	$(BIN)/pip install --quiet -e ".[test]"
	touch $@

setup: $(BIN)/prefixrl

demo: setup
	$(BIN)/prefixrl demo --config configs/demo.yaml --out runs/demo

# One thread per process unless told otherwise: an RL run's trajectory depends on the thread count
# (and the CPU), so the learning-outcome tests' margins are measured at 1 and 2 threads
# (benchmarks/claim_margin.py); `make test TEST_THREADS=2` runs them at 2.
TEST_THREADS ?= 1
# Test files run in TEST_WORKERS processes (pytest-xdist), a whole file to each, so the two slow claim
# tests train side by side on a 2-core machine; TEST_WORKERS=0 runs everything in this process.
TEST_WORKERS ?= 2

test: setup
	OMP_NUM_THREADS=$(TEST_THREADS) $(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile tests

clean:
	rm -rf $(VENV) runs
