# The README's two commands: `make demo` and `make test`.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed

.PHONY: demo test unit lab-test setup docker lab-up lab-down clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

docker:
	bash scripts/ensure-docker.sh

demo: docker setup
	$(BIN)/fab lab.up
	FABRIC_INVENTORY=.lab/hosts.toml $(BIN)/fab -H gpu1,gpu2,gpu3,gpu4 bootstrap
	FABRIC_INVENTORY=.lab/hosts.toml $(BIN)/fab gen-ssh-config
	@echo
	@echo "Your lab is ready. Try:  ssh -F .lab/ssh_config gpu1-dev"

test: docker setup
	$(BIN)/python -m pytest -q

unit: setup
	$(BIN)/python -m pytest -q tests/unit

lab-down: setup
	$(BIN)/fab lab.down

clean: lab-down
	rm -rf $(VENV) .gpufleet
