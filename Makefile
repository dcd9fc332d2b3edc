# Set-up on a fresh machine is one command: `make demo` or `make test` (both idempotent).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
TESTED := $(VENV)/.installed-test
FMNIST := /usr/share/datasets/fashion-mnist

.PHONY: install install-test data demo test clean

# Installs once; again only when pyproject.toml or the constraints change. `make demo` needs only the
# library; `make test` adds the test, tracking and launcher extras.
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e .
	touch $(STAMP)

$(TESTED): $(STAMP)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[test]'
	touch $(TESTED)

install: $(STAMP)

install-test: $(TESTED)

# Fashion-MNIST from Debian's dataset-fashion-mnist, where this machine lets us install it; never fails.
data:
	@if [ -d $(FMNIST) ]; then echo "Fashion-MNIST: $(FMNIST)"; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		(apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null) \
		|| echo "could not install dataset-fashion-mnist; Fashion-MNIST tests will be skipped"; \
	else echo "Fashion-MNIST is not installed: run 'sudo apt-get install dataset-fashion-mnist' or set SHIFTKIT_DATA"; fi

demo: $(STAMP)
	$(BIN)/shiftkit demo

test: $(TESTED) data
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) results .pytest_cache
