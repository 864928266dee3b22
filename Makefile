# The two commands: `make run` (the study, headless) and `make test` (the whole test suite).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
MODE   ?= full

.PHONY: run test notebook lab data bench clean help

help:
	@echo "make run      set up .venv, get the data, execute notebook.ipynb headless into runs/<timestamp>/, print the metrics"
	@echo "make test     set up .venv and run the whole test suite (TensorFlow, then the backend tests under JAX, and torch if installed)"
	@echo "make notebook re-execute notebook.ipynb in place (MODE=full), refresh doc/figures, doc/metrics.json and the results in README.md, doc/results.md, data/README.md"
	@echo "make bench    run the benchmarks in bench/ and update doc/performance.md"
	@echo "make lab      install JupyterLab and ipywidgets into .venv, register its kernel 'cxr (.venv)', open notebook.ipynb"

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test]"
	@touch $(STAMP)

run: $(STAMP)
	$(PY) -m cxr notebook --mode $(MODE) --run runs/$$(date +%Y%m%d-%H%M%S)

notebook: $(STAMP)
	$(PY) -m cxr notebook --mode $(MODE) --in-place
	$(PY) -m cxr results --run runs/$(MODE) --copy-metrics doc/metrics.json --copy-predictions doc/predictions.csv --update README.md doc/results.md data/README.md notebook.ipynb

test: $(STAMP)
	$(PY) -m pytest -q
	KERAS_BACKEND=jax $(PY) -m pytest -q -m backend
	@if $(PY) -c "import torch" 2>/dev/null; then \
		echo "KERAS_BACKEND=torch $(PY) -m pytest -q -m backend"; KERAS_BACKEND=torch $(PY) -m pytest -q -m backend; \
	else echo "torch is not installed: the backend tests under KERAS_BACKEND=torch are skipped (pip install torch)"; fi

# JupyterLab in the same .venv (the `lab` extra), its kernel registered inside .venv (--sys-prefix), the notebook
# opened; LAB_ARGS passes options to `jupyter lab`, e.g. LAB_ARGS="--no-browser --port 8899".
LAB_STAMP := $(VENV)/.lab-installed
LAB_ARGS  ?=

$(LAB_STAMP): $(STAMP) pyproject.toml
	$(PY) -m pip install --quiet -e ".[lab]"
	$(PY) -m ipykernel install --sys-prefix --name cxr --display-name "cxr (.venv)"
	@touch $(LAB_STAMP)

lab: $(LAB_STAMP)
	$(VENV)/bin/jupyter lab notebook.ipynb $(LAB_ARGS)

bench: $(STAMP)
	$(PY) bench/prepare.py
	$(PY) bench/train.py

clean:
	rm -rf runs .pytest_cache
