# The README's two commands: `make demo` and `make test`. Each creates .venv and installs
# what it needs; `make test` also installs the servers the tests start (PostgreSQL) when
# they are missing and it may (root on Debian).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

.PHONY: demo test test-unit lint system bench
demo: $(VENV)/.installed
	$(PY) -m engine demo

system:
	bash .ci/system-packages

test: $(VENV)/.installed system
	$(PY) -m pytest

# The fast loop: pure code only (no database, no servers), well under 30 s.
test-unit: $(VENV)/.installed
	$(PY) -m pytest tests/unit -q

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check engine tests bench
	$(VENV)/bin/ruff format --check engine tests bench
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy

bench: $(VENV)/.installed
	$(PY) bench/render.py
	$(PY) bench/send.py
	$(PY) bench/plan.py
	$(PY) bench/replies.py
	$(PY) bench/track.py
	$(PY) bench/report.py
