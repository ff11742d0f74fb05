# The README's commands: `make demo`, `make test`.  Everything runs inside .venv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Re-install only when the pins or the package metadata change.
STAMP := $(VENV)/.installed

.PHONY: setup test demo lint bench gpu-check zoo clean

setup: $(STAMP)

$(STAMP): requirements/cpu.txt requirements/dev.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -r requirements/dev.txt
	$(BIN)/python -m pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

test: setup
	$(BIN)/python -m pytest -n 2 --timeout 900 $(PYTEST_ARGS)

demo: setup
	$(BIN)/python tools/demo.py

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: setup
	$(BIN)/python tools/benchmark.py all --out bench_results

gpu-check: setup
	$(BIN)/python -m iresvid.benchmarks.gpu_check --out bench_results/gpu_check.json

zoo: setup
	$(BIN)/python -m iresvid.cli zoo

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
