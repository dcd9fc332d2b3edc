# Set-up on a fresh machine is one command: `make demo` or `make test` (both idempotent).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install demo test clean

# Installs once; again only when pyproject.toml or the constraints change.
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/shiftkit demo

test: $(STAMP)
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) results .pytest_cache
