# The README's two commands: `make demo` and `make test`. Both work on a fresh machine with Python 3.11 + pip.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip

.PHONY: demo test venv bench clean system-deps

# The virtualenv, refreshed whenever setup.py changes (the stamp records the extras installed).
$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

$(VENV)/.stamp-%: setup.py | $(PY)
	$(PIP) install -q -e ".[$*]"
	touch $@

venv: $(VENV)/.stamp-dev

## make demo: install, start hub serving on the embedded default models, recognise the demo photos, print answers.
demo: $(VENV)/.stamp-dev
	$(VENV)/bin/shitu demo --out demo_output

## Debian packages some tests need (tests/system-packages.txt), installed when missing and possible.
system-deps:
	@bash tests/install_system_packages.sh

## make test: create/refresh the virtualenv with the dev extra, install the Debian packages, run the whole suite.
test: $(VENV)/.stamp-dev system-deps
	$(PY) -m pytest -q tests

## make bench: the benchmark suite (tables on stdout, JSON in benchmarks/results/), then the tests that assert a
## wall-clock bound (pytest -m timing; a plain pytest skips them).
bench: $(VENV)/.stamp-dev
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) demo_output build *.egg-info .pytest_cache
