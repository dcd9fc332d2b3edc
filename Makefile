# Set-up on a fresh machine is one command: `make demo` or `make test` (both idempotent).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
TESTED := $(VENV)/.installed-test
FMNIST := /usr/share/datasets/fashion-mnist

.PHONY: install install-test data clusters demo test clean

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

# A single-node SLURM for the cluster tests (tests/clusters.py starts and stops its daemons), from Debian's
# packages, where this machine lets us install them; never fails (those tests then skip, or fail in CI).
SLURM_PACKAGES := slurmctld slurmd slurmdbd slurm-client munge mariadb-server
clusters:
	@if [ -x /usr/sbin/slurmctld ] && [ -x /usr/sbin/slurmdbd ] && [ -x /usr/sbin/munged ] && [ -x /usr/sbin/mariadbd ]; \
	then echo "SLURM: installed"; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(SLURM_PACKAGES) >/dev/null) \
		|| echo "could not install SLURM; the SLURM tests will be skipped"; \
	else echo "SLURM is not installed: run 'sudo apt-get install $(SLURM_PACKAGES)' for its tests"; fi

demo: $(STAMP)
	$(BIN)/shiftkit demo

test: $(TESTED) data clusters
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) results .pytest_cache
