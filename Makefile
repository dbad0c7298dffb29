# Two commands a new user needs: `make run` and `make test`.
# Both create .venv when it is missing and (re)install the project when
# pyproject.toml changes, so a fresh clone needs only Python 3.11+ and git.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
RUN_STAMP  := $(VENV)/.run-installed
DEV_STAMP  := $(VENV)/.dev-installed
TS_CLIENT  := clients/typescript
NODE_STAMP := $(TS_CLIENT)/node_modules/.installed
NODE_AGENT := examples/node-agent
AGENT_STAMP := $(NODE_AGENT)/node_modules/.installed

.PHONY: run test lint typecheck pytest soak bench ts-client clean help

help:
	@echo "make run    - start the API with an embedded Redis and a demo fleet"
	@echo "make test   - ruff, mypy and the test suite (starts its own redis-server)"
	@echo "make bench  - benchmarks in bench/, each against a bare baseline"
	@echo "make soak   - 30 minutes of the demo fleet: no timeouts, every command completed"

$(BIN)/python:
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ is required"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(RUN_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e .
	@touch $@

$(DEV_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[dev]'
	@touch $@ $(RUN_STAMP)

run: $(RUN_STAMP)
	$(BIN)/ezdash serve

lint: $(DEV_STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(DEV_STAMP)
	$(BIN)/mypy

# The TypeScript client the frontend compiles against (tests/test_typescript_client.py);
# skipped, with its reason, where there is no Node.js at all.
$(NODE_STAMP): $(TS_CLIENT)/package.json $(TS_CLIENT)/package-lock.json
	@if command -v npm >/dev/null 2>&1; then \
	  npm ci --prefix $(TS_CLIENT) --no-audit --no-fund --loglevel=error && touch $@; \
	else echo "npm not found: the TypeScript client test will be skipped"; fi

# The reference agent in TypeScript (tests/test_node_agent.py builds and runs it).
$(AGENT_STAMP): $(NODE_AGENT)/package.json $(NODE_AGENT)/package-lock.json
	@if command -v npm >/dev/null 2>&1; then \
	  npm ci --prefix $(NODE_AGENT) --no-audit --no-fund --loglevel=error && touch $@; \
	else echo "npm not found: the node agent test will be skipped"; fi

pytest: $(DEV_STAMP) $(NODE_STAMP) $(AGENT_STAMP)
	$(BIN)/pytest

# Regenerate the client's types from the current OpenAPI document (commit the result).
ts-client: $(DEV_STAMP) $(NODE_STAMP)
	$(BIN)/ezdash openapi > $(TS_CLIENT)/openapi.json
	cd $(TS_CLIENT) && node_modules/.bin/openapi-typescript openapi.json \
	  -o src/schema.d.ts --default-non-nullable=false && rm openapi.json

test: lint typecheck pytest

soak: $(DEV_STAMP)
	$(BIN)/pytest -m soak tests/test_soak.py

bench: $(DEV_STAMP)
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache $(TS_CLIENT)/node_modules $(TS_CLIENT)/dist \
	  $(NODE_AGENT)/node_modules $(NODE_AGENT)/dist
