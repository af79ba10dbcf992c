# Set-up on a fresh machine: `make demo` or `make test` creates .venv, installs torch==2.13.0 (the CPU
# wheel; an unpinned torch pulls a multi-GB CUDA build) and then reprlab with its test extras.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

.PHONY: install demo test test-all bench
install: $(STAMP)

demo: $(STAMP)
	$(BIN)/reprlab demo

test: $(STAMP)
	$(BIN)/pytest -m "not slow" -q

test-all: $(STAMP)
	$(BIN)/pytest -q
