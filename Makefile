# The documented commands. Each one sets up what it needs in .venv first, from the committed locks
# in requirements/ (exact versions and hashes): a fresh machine installs what CI last tested.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip --quiet --disable-pip-version-check
LOCKS  := $(BIN)/python requirements/locks.py
TRITON := .venv-triton

.PHONY: run test check check-latest lock venv bench bench-quick proto clean

$(BIN)/python:
	$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11) and "gradwire needs Python 3.11 or newer")'
	$(PYTHON) -m venv $(VENV)

# make run's environment: exactly requirements/server.txt, and gradwire from this tree (editable).
$(VENV)/.server: requirements/server.txt pyproject.toml | $(BIN)/python
	$(LOCKS) sync server
	rm -f $(VENV)/.dev $(VENV)/.torch
	touch $@

# The dev environment, exactly requirements/dev.txt: the server's packages, the extras, the tests,
# linters, type checker, stub generator and uv. It serves make run too.
$(VENV)/.dev: requirements/dev.txt pyproject.toml | $(BIN)/python
	$(LOCKS) sync dev
	rm -f $(VENV)/.torch
	touch $@ $(VENV)/.server

venv: $(VENV)/.server

# tritonclient, a client of the open inference protocol that is not gradwire's, in an environment
# of its own (it pins protobuf below gradwire's), exactly requirements/triton.txt: tests/interop.
$(TRITON)/.done: requirements/triton.txt
	$(PYTHON) -m venv $(TRITON)
	$(TRITON)/bin/python -m pip --quiet --disable-pip-version-check install --require-hashes --no-deps \
		-r requirements/triton.txt
	touch $@

run: $(VENV)/.server
	$(BIN)/gradwire serve --auth off

test: $(VENV)/.dev $(TRITON)/.done
	$(BIN)/python -m pytest

# mypy and import-linter read the sources through links laid out as the installed names
# (gradwire/engine -> engine/ ...), the same mapping pyproject.toml gives setuptools.
LINKS := .typecheck/gradwire
# The locks against pyproject.toml's ranges, the generated code against the locked generator, then
# lint, format, types and the dependency arrows.
check: $(VENV)/.dev
	mkdir -p $(LINKS) && for p in engine service storage client; do ln -sfn ../../$$p $(LINKS)/$$p; done
	for p in v1 inference; do ln -sfn ../../proto/gradwire/$$p $(LINKS)/$$p; done
	$(LOCKS) check
	PYTHON=$(CURDIR)/$(BIN)/python proto/generate.sh --check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/mypy --strict requirements/locks.py
	PYTHONPATH=.typecheck $(BIN)/lint-imports

# The newest releases pyproject.toml's ranges allow, in a fresh .venv-latest, against the fast part
# of the suite: a breaking release is met here before a user of `pip install gradwire` meets it.
# Where the suite fails there, it names the release that breaks it.
check-latest: $(BIN)/python
	$(BIN)/python requirements/locks.py latest .venv-latest

# Re-resolve every lock to the newest versions the ranges allow, then bring .venv to the new dev
# lock and regenerate the protobuf code with its grpcio-tools. Review the diff, run make test.
lock: $(VENV)/.dev
	$(LOCKS) compile --upgrade
	$(MAKE) proto

# PyTorch is the benchmark's outside reference, never a dependency. Installed only where pip
# can take the CPU build without downloading (a local wheel pip is configured to find);
# elsewhere the benchmark reports it as absent.
$(VENV)/.torch: | $(VENV)/.dev
	-$(PIP) install --no-index --no-deps torch==2.13.0 && $(PIP) install torch==2.13.0
	touch $@

bench: $(VENV)/.dev $(VENV)/.torch
	$(BIN)/python -m bench.engine_bench
	$(BIN)/python -m bench.service_bench
	$(BIN)/python -m bench.scaling_bench
	$(BIN)/python -m bench.ray_bench

bench-quick: $(VENV)/.dev
	$(BIN)/python -m bench.engine_bench --quick
	$(BIN)/python -m bench.service_bench --quick
	$(BIN)/python -m bench.scaling_bench --quick
	$(BIN)/python -m bench.ray_bench --quick

# Regenerate the committed protobuf/gRPC code from proto/gradwire/v1/gradwire.proto.
proto: $(VENV)/.dev
	PYTHON=$(CURDIR)/$(BIN)/python proto/generate.sh

clean:
	rm -rf $(VENV) .venv-latest $(TRITON) .mypy_cache .ruff_cache .pytest_cache .hypothesis
