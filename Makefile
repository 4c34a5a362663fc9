# The two commands: `make run` and `make test`. Both set up .venv on first use: `run` installs
# what the service needs, `test` (and lint, bench) the development tools too.
PYTHON ?= python3
VENV := .venv
SUM := $(shell cksum pyproject.toml | cut -d' ' -f1)
RUNTIME := $(VENV)/.installed-run-$(SUM)
DEV := $(VENV)/.installed-dev-$(SUM)

.PHONY: install run test lint bench clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip

$(RUNTIME): pyproject.toml | $(VENV)/bin/python
	@echo "Installing Leadstream's runtime dependencies into $(VENV) (about a minute the first time)"
	$(VENV)/bin/pip install --progress-bar on -e .
	rm -f $(VENV)/.installed-run-* && touch $(RUNTIME)

$(DEV): $(RUNTIME)
	@echo "Installing the development tools (pytest, ruff, mypy, ...) into $(VENV)"
	$(VENV)/bin/pip install --progress-bar on -e ".[dev]"
	rm -f $(VENV)/.installed-dev-* && touch $(DEV)

install: $(DEV)

run: $(RUNTIME)
	$(VENV)/bin/leadstream run

test: $(DEV)
	$(VENV)/bin/python -m pytest

lint: $(DEV)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy shared ingest_api worker ops bench

bench: $(DEV)
	$(VENV)/bin/python -m bench.run

clean:
	rm -rf $(VENV) .data
