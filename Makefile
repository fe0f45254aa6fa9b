# The README's two set-up commands are `make serve` and `make test`; both go through `make install`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install serve test lint clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

serve: install
	$(BIN)/afv serve --host 127.0.0.1 --port 8000

test: install
	$(BIN)/python -m pytest tests

# ruff (style), mypy (types, mypy.ini) and the import contract (.importlinter: the layers of ARCHITECTURE.md)
lint: install
	$(BIN)/ruff check durable model index service tests bench
	$(BIN)/ruff format --check durable model index service tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports

clean:
	rm -rf $(VENV) build *.egg-info
