# The documented commands. Each one sets up what it needs in .venv first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip --quiet --disable-pip-version-check

.PHONY: run test check bench bench-quick proto clean

$(BIN)/python:
	$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11) and "gradwire needs Python 3.11 or newer")'
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip

# The server's dependencies: what `make run` needs (`pip install gradwire` alone is the client).
$(VENV)/.runtime: pyproject.toml | $(BIN)/python
	$(PIP) install -e '.[server]'
	touch $@

# Runtime plus the dev extra: tests, linters, type checker, stub generator.
$(VENV)/.dev: pyproject.toml | $(BIN)/python
	$(PIP) install -e '.[dev]'
	touch $@ $(VENV)/.runtime

run: $(VENV)/.runtime
	$(BIN)/gradwire serve --auth off

test: $(VENV)/.dev
	$(BIN)/python -m pytest

# mypy and import-linter read the sources through links laid out as the installed names
# (gradwire/engine -> engine/ ...), the same mapping pyproject.toml gives setuptools.
LINKS := .typecheck/gradwire
check: $(VENV)/.dev
	mkdir -p $(LINKS) && for p in engine service storage client; do ln -sfn ../../$$p $(LINKS)/$$p; done
	ln -sfn ../../proto/gradwire/v1 $(LINKS)/v1
	PYTHON=$(CURDIR)/$(BIN)/python proto/generate.sh --check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	PYTHONPATH=.typecheck $(BIN)/lint-imports

# PyTorch is the benchmark's outside reference, never a dependency. Installed only where pip
# can take the CPU build without downloading (a local wheel pip is configured to find);
# elsewhere the benchmark reports it as absent.
$(VENV)/.torch: | $(VENV)/.dev
	-$(PIP) install --no-index --no-deps torch==2.13.0 && $(PIP) install torch==2.13.0
	touch $@

bench: $(VENV)/.dev $(VENV)/.torch
	$(BIN)/python -m bench.engine_bench
	$(BIN)/python -m bench.service_bench

bench-quick: $(VENV)/.dev
	$(BIN)/python -m bench.engine_bench --quick
	$(BIN)/python -m bench.service_bench --quick

# Regenerate the committed protobuf/gRPC code from proto/gradwire/v1/gradwire.proto.
proto: $(VENV)/.dev
	PYTHON=$(CURDIR)/$(BIN)/python proto/generate.sh

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
