# `make demo` trains and evaluates the headline experiment on Fashion-MNIST; `make test` runs lint, the tests and
# builds the documentation site (mkdocs.yml, docs/) into ./site with --strict (a broken link or docstring fails).
# Both create ./.venv and install the pinned requirements on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test demo paper install bench clean

$(STAMP): requirements.txt requirements-test.txt setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt -r requirements-test.txt
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	$(PY) -m ipykernel install --prefix $(VENV) --name python3 >/dev/null
	touch $@

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m ops.demo

# Every claim of the original on the reference networks: runs/paper/<uid>/report.md (QUICK=1: fewer images).
paper: $(STAMP)
	$(PY) -m ops.paper $(if $(filter 1,$(QUICK)),--quick,)

test: $(STAMP)
	$(VENV)/bin/ruff check .
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict -q -d site
	$(PY) -m pytest -q tests

# Each prints JSON lines; run nothing else meanwhile (2 cores: a busy neighbour moves the figures).
bench: $(STAMP)
	$(PY) benchmarks/train_speed.py --repeat 3
	$(PY) benchmarks/eval_speed.py
	$(PY) benchmarks/landscape_speed.py
	$(PY) benchmarks/corruption_speed.py

clean:
	rm -rf runs leaderboard models_checkpoints .pytest_cache site
