# Two commands for a new user: `make run` starts the whole service locally, `make test` runs the tests.
# Each installs what it needs into .venv first (Python 3.11 required).

PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test install clean check-infra

# Infrastructure checks (checkov) live in their own virtualenv: checkov pins dozens of packages
# that must not meet the app's pins in .venv.
INFRA_VENV := .venv-infra
INFRA_BIN := $(INFRA_VENV)/bin
INFRA_STAMP := $(INFRA_VENV)/.installed
CHECKOV_FLAGS := -d infra --framework bicep --quiet --compact --skip-download

$(STAMP): requirements.txt requirements-dev.txt
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "$(PYTHON) not found; set PYTHON=/path/to/python3.11"; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt
	@touch $(STAMP)

install: $(STAMP)

# Azurite (the Azure Storage emulator) for the Table Storage adapter's tests, from the npm registry.
NODE_STAMP := node_modules/.installed

$(NODE_STAMP): package.json package-lock.json
	@command -v npm >/dev/null 2>&1 || { echo "npm not found: install Node.js 20"; exit 1; }
	npm ci --no-audit --no-fund --loglevel=error
	@touch $(NODE_STAMP)

$(INFRA_STAMP): requirements-infra.txt
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "$(PYTHON) not found; set PYTHON=/path/to/python3.11"; exit 1; }
	@test -x $(INFRA_BIN)/python || $(PYTHON) -m venv $(INFRA_VENV)
	$(INFRA_BIN)/python -m pip install --quiet --upgrade pip
	$(INFRA_BIN)/python -m pip install --quiet -r requirements-infra.txt
	@touch $(INFRA_STAMP)

# Static checks of the Bicep in infra/ (no Azure needed). Fails on any failed check, and on a
# file checkov cannot parse (it would otherwise pass unchecked). A check we decide not to meet
# is skipped inline in the Bicep, with its reason: // checkov:skip=CKV_AZURE_xx: why
check-infra: $(INFRA_STAMP)
	@out=$$($(INFRA_BIN)/checkov $(CHECKOV_FLAGS) 2>&1); status=$$?; echo "$$out"; \
	if [ $$status -ne 0 ]; then exit $$status; fi; \
	echo "$$out" | grep -q "Passed checks: [1-9]" || { echo "check-infra: checkov checked nothing"; exit 1; }; \
	if echo "$$out" | grep -q "Parsing errors: [1-9]"; then echo "check-infra: checkov could not parse a Bicep file"; exit 1; fi

run: $(STAMP)
	$(BIN)/python -m shared run

# The infrastructure checks run first, so pytest's summary stays the last thing printed.
test: $(STAMP) $(NODE_STAMP) check-infra
	$(BIN)/python -m pytest

clean:
	rm -rf .data .pytest_cache .hypothesis $(INFRA_VENV)
