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

test: setup
	$(BIN)/python -m pytest tests

clean:
	rm -rf $(VENV) runs
