# Two commands for a fresh machine: `make demo` and `make test`. Each does its own set-up:
# the virtualenv, the install, and the local Kafka, Weaviate and Jaeger (built once, cached in
# ~/.cache/loraswarm and in pip's, Maven's and Go's own caches).

SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TYPECHECK := build/typecheck

.PHONY: all install constraints infra infra-down models lint tree typecheck test demo bench clean

all: test

# constraints.txt holds the versions `make test` last passed with: a fresh clone installs those,
# not whatever was released since (typer 0.28, for one, dropped the click objects docs.py reads).
$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev]"
	$(BIN)/python -m pip install --quiet --no-deps text-generation==0.7.0
	@touch $@

install: $(STAMP)

# After upgrading within pyproject.toml's ranges and a green `make test`: record the versions.
constraints: install
	@{ sed -n '1,2p' constraints.txt; $(BIN)/python -m pip freeze --exclude-editable \
	  | grep -v -E '^(loraswarm|text-generation)=='; } > constraints.txt.new
	mv constraints.txt.new constraints.txt

infra: install
	$(BIN)/loraswarm infra up

models: install
	$(BIN)/loraswarm models pull

infra-down: install
	$(BIN)/loraswarm infra down

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# Static tools read folders named as imported; setuptools maps shared/ and services/ into
# loraswarm instead. build/typecheck is that view, generated from pyproject.toml's package-dir
# (pyright and IDEs read it through [tool.pyright] stubPath, mypy through mypy_path).
tree: install
	$(BIN)/python -m loraswarm.import_tree $(TYPECHECK)

typecheck: tree
	cd $(TYPECHECK) && $(CURDIR)/$(BIN)/mypy --config-file $(CURDIR)/pyproject.toml -p loraswarm
	$(BIN)/mypy tests

test: lint typecheck infra models
	$(BIN)/pytest -q

# The demo itself runs on the embedded default (in-process broker, embedded Weaviate, spans to a
# file); Kafka and Weaviate are started for the five commands that follow it. Jaeger is not built
# here: on a bare 2-core machine its Go build was 4.2 of the first `make demo`'s 21.8 minutes, and
# nothing the demo or the five commands do sends it a span (`make test` and `loraswarm infra up`
# build it; `loraswarm infra up jaeger` alone for the dashboards).
demo: install models
	$(BIN)/loraswarm infra up kafka weaviate
	$(BIN)/loraswarm demo

bench: infra
	$(BIN)/loraswarm bench events

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .ruff_cache .pytest_cache
