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

# PaddleClas's own build_gallery.py writes the index folders tests/test_paddleclas_import.py imports. Installed
# without its dependencies: its pins (numpy==1.24.4, opencv<=4.6) would replace the engine's; what the script
# needs is already in the dev extra.
$(VENV)/.stamp-paddleclas: | $(VENV)/.stamp-dev
	$(PIP) install -q --no-deps paddleclas==2.6.0
	touch $@

## make demo: install, start hub serving on the embedded default models, recognise the demo photos, print answers,
## then print the web page's URL and keep serving it until Ctrl-C.
demo: $(VENV)/.stamp-dev
	$(VENV)/bin/shitu demo --out demo_output --serve

## Debian packages some tests need (tests/system-packages.txt), installed when missing and possible.
system-deps:
	@bash tests/install_system_packages.sh

## make test: create/refresh the virtualenv with the dev extra, install the Debian packages, run the whole suite.
test: $(VENV)/.stamp-dev $(VENV)/.stamp-paddleclas system-deps
	$(PY) -m pytest -q tests

## make bench: the benchmark suite (tables on stdout, JSON in benchmarks/results/), then the tests that assert a
## wall-clock bound (pytest -m timing; a plain pytest skips them).
bench: $(VENV)/.stamp-dev
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) demo_output build *.egg-info .pytest_cache
