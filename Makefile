# Everything a fresh clone needs: `make run` serves the dashboard, `make test` runs every check.
SHELL := /bin/bash
VENV := .venv
PYTHON := $(VENV)/bin/python
# --no-compile: pip would byte-compile all ~7,600 installed modules (minutes on a busy 2-core machine);
# Python compiles the ones a run imports, once, on first import.
PIP_INSTALL := $(VENV)/bin/pip install --quiet --disable-pip-version-check --no-compile
BIND ?= 127.0.0.1:8000
SAMPLE_COUNT ?= 20000
PYTEST_ARGS ?=

.PHONY: run test test-sqlite test-postgres lint format bench bench-scale venv dev-venv system-deps clean

$(PYTHON):
	@echo "Creating the virtualenv in $(VENV)..."
	python3 -m venv $(VENV)

# Reinstall only when a requirements file changed.
# pip is quiet, so say what the wait is for.
$(VENV)/.requirements: requirements.txt | $(PYTHON)
	@echo "Installing Python packages from requirements.txt (the first run takes a minute)..."
	$(PIP_INSTALL) -r requirements.txt 2> >(grep -v "is ignored: it is neither" >&2)
	touch $@

$(VENV)/.requirements-dev: requirements.txt requirements-dev.txt | $(PYTHON)
	@echo "Installing Python packages from requirements-dev.txt (the first run takes a minute or two)..."
	$(PIP_INSTALL) -r requirements-dev.txt 2> >(grep -v "is ignored: it is neither" >&2)
	touch $(VENV)/.requirements $@

venv: $(VENV)/.requirements
dev-venv: $(VENV)/.requirements-dev

run: venv
	@echo "Preparing the database..."
	$(PYTHON) manage.py migrate --noinput
	$(PYTHON) manage.py generate_sample_data --count $(SAMPLE_COUNT) --days 30 --if-empty
	$(PYTHON) manage.py collectstatic --noinput --verbosity 0
	@$(PYTHON) manage.py ensure_admin
	@echo "Serving http://$(BIND)/ (Ctrl-C to stop)"
	$(VENV)/bin/gunicorn --config core/gunicorn.conf.py core.asgi:application --bind $(BIND)

lint: dev-venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: dev-venv
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

system-deps:
	@scripts/install-system-deps

# Tests read tests.settings (see pyproject.toml): no .env, none of the shell's settings variables but
# DATABASE_URL, which the two targets below set or unset.
test: dev-venv system-deps lint
	env -u DATABASE_URL DJANGO_SETTINGS_MODULE=tests.settings $(PYTHON) manage.py makemigrations --check --dry-run
	@echo "== tests on SQLite and on PostgreSQL, side by side (each suite's output appears when it ends)"
	@# The tests that take the same path on any database go to the PostgreSQL suite, the shorter one
	@# (tests/conftest.py); run alone, the SQLite suite runs them.
	OBSERVATORY_ONE_DATABASE_SUITE=postgresql $(MAKE) --no-print-directory -j2 --output-sync=target test-sqlite test-postgres

test-sqlite: dev-venv
	@echo "== tests on SQLite"
	env -u DATABASE_URL $(VENV)/bin/pytest $(PYTEST_ARGS)

test-postgres: dev-venv
	@echo "== tests on PostgreSQL (throwaway cluster on 127.0.0.1)"
	scripts/with-postgres $(VENV)/bin/pytest $(PYTEST_ARGS)

# Speed and memory targets, measured on SQLite and on a throwaway PostgreSQL (takes a while).
# The API and dashboard benches share one 1,000,000-row database per engine (filling it takes minutes).
BENCH_1M = $(PYTHON) bench/api_bench.py && $(PYTHON) bench/dashboard_bench.py

bench: dev-venv system-deps
	dir=$$(mktemp -d) && DATABASE_URL=sqlite:///$$dir/bench.sqlite3 sh -c '$(BENCH_1M)'; status=$$?; rm -rf "$$dir"; exit $$status
	scripts/with-postgres sh -c '$(BENCH_1M)'
	env -u DATABASE_URL $(PYTHON) bench/metrics_bench.py
	scripts/with-postgres $(PYTHON) bench/metrics_bench.py
	scripts/with-postgres $(PYTHON) bench/hotpath_bench.py

# Every metrics endpoint and page at 24 h to 90 d over 10,000,000 calls in a throwaway PostgreSQL,
# next to the same figures from raw rows (bench/scale_bench.py; BENCH_SCALE_ROWS=200000 for a quick run).
bench-scale: dev-venv system-deps
	scripts/with-postgres $(PYTHON) bench/scale_bench.py

clean:
	rm -rf $(VENV) staticfiles .pytest_cache .ruff_cache
