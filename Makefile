# The README's two commands: `make demo` and `make test`. Both work on a fresh machine with Python 3.11 + pip.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip

.PHONY: demo test venv bench clean system-deps peer-deps milvus-lite lint docs transcripts

# The virtualenv, refreshed whenever setup.py changes (the stamp records the extras installed).
$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

$(VENV)/.stamp-%: setup.py | $(PY)
	$(PIP) install -q -e ".[$*]"
	touch $@

venv: $(VENV)/.stamp-dev

## make demo: install, start hub serving on the embedded default models, recognise the demo photos, print answers,
## then print the web page's URL and keep serving it until Ctrl-C.
demo: $(VENV)/.stamp-dev
	$(VENV)/bin/shitu demo --out demo_output --serve

## Debian packages some tests need (tests/system-packages.txt), installed when missing and possible.
system-deps:
	@bash tests/install_system_packages.sh

# PaddleClas 2.6.0, without its dependencies (its pins, numpy==1.24.4 and opencv<=4.6, would replace the engine's;
# what its deploy scripts need is in the dev extra): the parity test and the PaddleClas index import run its code.
peer-deps: $(VENV)/.stamp-dev
	@$(PY) -c "import paddleclas" 2>/dev/null || $(PIP) install -q --no-deps paddleclas==2.6.0 \
		|| echo "paddleclas not installed: the PaddleClas parity test will be skipped"

## The milvus-lite server's own packages (pymilvus 3 / protobuf 7; paddlehub pins protobuf 3.20.3 in the venv),
## put on the server's PYTHONPATH by tests/milvus_server.py.
MILVUS_SERVER := $(VENV)/milvus-server
$(MILVUS_SERVER)/.stamp: | $(PY)
	$(PIP) install -q --no-deps --target $(MILVUS_SERVER) "pymilvus==3.0.2" "protobuf==7.36.2" "cachetools==8.0.2"
	touch $@

milvus-lite: $(MILVUS_SERVER)/.stamp

## make lint: ruff (lint + format), mypy on the typed rooms, import-linter's contracts (pyproject.toml).
# Both read the code under its import names: build/typecheck/shitu is a hard-linked copy of the folders setup.py
# maps under `shitu`; import-linter runs from there without site's .pth files (-S), so the editable install's
# finder does not send `shitu` back to the source folders.
TYPED := shitu.params shitu.serving.engine shitu.serving.gallery shitu.serving.galleries shitu.serving.results \
	shitu.serving.adapt shitu.serving.quantize shitu.serving.video shitu.serving.client shitu.plugins shitu.errors
SITE   = $(shell $(PY) -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
lint: $(VENV)/.stamp-dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	@rm -rf build/typecheck && mkdir -p build/typecheck/shitu
	@cp -al shitu/*.py build/typecheck/shitu/ && for d in serving plugins params hub_modules; do \
		cp -al $$d build/typecheck/shitu/$$d; done
	MYPYPATH=build/typecheck $(VENV)/bin/mypy $(addprefix -p ,$(TYPED))
	cd build/typecheck && PYTHONPATH=.:$(SITE) $(abspath $(PY)) -S -c \
		"import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())" \
		--config ../../pyproject.toml

## make docs: the documentation site (mkdocs.yml, docs/*.md) built with --strict into build/site: a broken link or
## anchor, an absolute link or a page missing from the nav fails it.
docs: $(VENV)/.stamp-dev
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet
	@echo "docs built: build/site/index.html"

## make transcripts: rerun every transcript of README.md and docs/*.md (the `<!-- run:NAME -->` blocks: commands,
## SDK examples, HTTP requests against a real `shitu serve`) and rewrite them; tools/transcripts.py --check diffs.
transcripts: $(VENV)/.stamp-dev
	$(PY) tools/transcripts.py --write

## make test: create/refresh the virtualenv with the dev extra, install the Debian packages, lint, build the docs,
## run the whole suite.
## SEED: pytest-randomly's seed (the run prints it; `make test SEED=N` repeats that order).
ifndef SEED
SEED := $(shell python3 -c 'import random; print(random.randrange(1, 2**31))')
endif
test: $(VENV)/.stamp-dev system-deps peer-deps milvus-lite lint docs
	@echo "test order: pytest-randomly seed $(SEED) (make test SEED=$(SEED) repeats it)"
	$(PY) -m pytest -q -p randomly --randomly-seed=$(SEED) tests

## make bench: the benchmark suite (tables on stdout, JSON in benchmarks/results/), then the tests that assert a
## wall-clock bound (pytest -m timing; a plain pytest skips them), then every figure as one table.
## BENCH_ARGS: --quick (smaller sizes, ~15 min on 2 cores), --write-docs (regenerate docs/benchmarks.md's figures table).
BENCH_ARGS ?=
bench: $(VENV)/.stamp-dev system-deps milvus-lite
	$(PY) benchmarks/run_all.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) demo_output build *.egg-info .pytest_cache
