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

# test-only: Microsoft's jsonc-parser reads back the settings.json that gen-ssh-config --vscode writes
JSONC   := tests/jsonc/node_modules/.package-lock.json

$(JSONC): tests/jsonc/package-lock.json
	command -v npm >/dev/null || (apt-get update -q && apt-get install -y -q nodejs npm)
	cd tests/jsonc && npm ci --no-audit --no-fund --ignore-scripts

setup: $(STAMP)

docker:
	bash scripts/ensure-docker.sh

demo: docker setup
	$(BIN)/fab lab.up
	FABRIC_INVENTORY=.lab/hosts.toml $(BIN)/fab -H gpu1,gpu2,gpu3,gpu4 bootstrap
	FABRIC_INVENTORY=.lab/hosts.toml $(BIN)/fab gen-ssh-config
	@echo
	@echo "Your lab is ready. Try:  ssh -F .lab/ssh_config gpu1-dev"

test: docker setup $(JSONC)
	$(BIN)/python -m pytest -q

unit: setup $(JSONC)
	$(BIN)/python -m pytest -q tests/unit

lab-down: setup
	$(BIN)/fab lab.down

clean: lab-down
	rm -rf $(VENV) .gpufleet
