# The two commands of the README: `make demo` and `make test`. Everything else is optional.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CHECKSUM := $(shell cat pyproject.toml django-crossdb/pyproject.toml | cksum | cut -d' ' -f1)
# Two installs: the demo needs the project alone; lint, test, soak and bench add the dev tools.
STAMP := $(VENV)/.installed-dev-$(CHECKSUM)
DEMO_STAMP := $(VENV)/.installed-demo-$(CHECKSUM)
MANAGE := $(BIN)/python manage.py

.PHONY: demo test lint typecheck format migrate bench soak serve clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml django-crossdb/pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e "./django-crossdb[postgres]" -e ".[dev]"
	rm -f $(VENV)/.installed-* && touch $@ $(DEMO_STAMP)

$(DEMO_STAMP): pyproject.toml django-crossdb/pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e "./django-crossdb[postgres]" -e .
	rm -f $(VENV)/.installed-demo-* && touch $@

demo: $(DEMO_STAMP)  ## migrate every database and load the demo data (installs no dev tools)
	$(MANAGE) migrate_all
	$(MANAGE) insert_data

migrate: $(DEMO_STAMP)
	$(MANAGE) migrate_all

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)  ## mypy over the reusable app (settings in pyproject.toml)
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

test: lint typecheck  ## install the dev tools, lint, type checks, then the whole test suite
	$(BIN)/pytest

soak: $(STAMP)  ## long loops: MULTIDS_SOAK_KILLS kills, MULTIDS_SOAK_WRITERS writers, MULTIDS_SOAK_SECONDS of checker per backend, MULTIDS_MACHINE_EXAMPLES guard machine examples per backend
	MULTIDS_SOAK=1 $(BIN)/pytest -m slow -s tests/test_reliability.py tests/test_checker.py tests/test_overview.py tests/test_guard_machine.py
	MULTIDS_SOAK=1 $(BIN)/pytest -m slow -s --ds tests.settings_postgres tests/test_guard_machine.py

clean:
	rm -rf $(VENV) *.db *.db-wal *.db-shm bench-data

bench: $(STAMP)  ## 1.11M rows (ARGS=--scale 10: 11.1M) on SQLite and PostgreSQL: floors, plain-code references, insert_data fresh, re-run, conflicting, append, resume, pgloader
	$(BIN)/python -m bench $(ARGS)

serve: $(DEMO_STAMP)  ## the admin on http://127.0.0.1:8000/admin/ with the demo data (see the README)
	$(MANAGE) migrate_all
	$(MANAGE) insert_data --no-progress
	@echo "First time? Create the admin user in another terminal: $(BIN)/python manage.py createsuperuser"
	MULTIDS_DEBUG=1 $(MANAGE) runserver 127.0.0.1:8000
