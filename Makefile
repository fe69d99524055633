# The two commands a newcomer runs: `make demo` and `make test`.
# Both build their own virtual environment in .venv (override with VENV=...).

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.qsm-installed

.PHONY: demo test test-slow bench venv clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	@# CPU-only torch for stable-baselines3: where this machine keeps the CPU wheel on disk
	@# (--no-index looks only at local find-links), install it and its dependencies first;
	@# elsewhere the normal resolver picks torch when the package is installed below.
	( $(PIP) install --quiet --no-index --no-deps torch==2.13.0 && $(PIP) install --quiet torch==2.13.0 ) \
	  || echo "no local CPU torch wheel: pip resolves torch normally"
	$(PIP) install --quiet -e ".[dev]"
	$(PIP) freeze > $(VENV)/pip-freeze.txt
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(PY) -m qsmgym.experiments.demo --out demo_out

# Two workers (CI has 2 cores); --dist loadfile keeps each file, and its module fixtures, on one worker.
# --durations=25 lists the slowest tests, to keep the default suite under 20 minutes.
test: $(STAMP)
	$(PY) -m pytest -n 2 --dist loadfile --durations=25

test-slow: $(STAMP)
	$(PY) -m pytest -m slow

bench: $(STAMP)
	$(PY) -m qsmgym.experiments.bench

clean:
	rm -rf $(VENV) build dist *.egg-info demo_out
