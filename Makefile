# Two commands do all the set-up on a fresh machine (Python 3.10+ with venv):
#   make demo   installs altsieve into .venv and runs the demo
#   make test   installs altsieve into .venv and runs the tests
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install demo test lint bench

$(BIN)/altsieve: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e ".[content,test]"
	touch $(BIN)/altsieve

install: $(BIN)/altsieve

demo: install
	$(BIN)/altsieve demo --output altsieve-demo

test: install
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check .
	$(BIN)/python .ci/lint_imports.py
