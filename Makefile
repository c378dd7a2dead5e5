# `make run` opens the window, `make test` runs every test. Both create .venv
# and install the project into it first, only when it is missing or out of date.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: run test lint bench screenshot

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --upgrade pip >/dev/null
	$(VENV)/bin/python -m pip install -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/python main.py

test: $(STAMP)
	QT_QPA_PLATFORM=offscreen $(VENV)/bin/python -m pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check workbench tests benchmarks

screenshot: $(STAMP)
	QT_QPA_PLATFORM=offscreen $(VENV)/bin/python benchmarks/screenshot.py docs/screenshot.png
