# Two commands set everything up on a fresh machine with Python 3.11:
#   make run    the platform (web + worker, SQLite + embedded broker, demo data)
#   make test   lint and the whole test suite, on SQLite and on PostgreSQL
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
# Bytecode caches on: a shell with PYTHONDONTWRITEBYTECODE set (this machine's does) has every
# process compile the project again, and each test process rewrite the asserts of 386 plugin
# modules again (9 s of its start-up).
unexport PYTHONDONTWRITEBYTECODE
export HOST ?= 127.0.0.1
export PORT ?= 8000
# PostgreSQL for the second test pass (.ci/run starts the server when it is down).
TEST_POSTGRES_URL ?= postgres://postgres@127.0.0.1:5432/classifier_site
PYTEST_ARGS ?=
# Both passes run in parallel (pytest-xdist): one process per core plus one, which fills
# the time the others spend waiting on the workers, servers and browsers they start
# (2 cores: 5 min 49 s with 3 processes, 6 min 28 s with 2, 6 min 12 s with 4); an idle
# process takes tests queued for a busy one, so no long test ends a pass alone.
PYTEST_PARALLEL ?= -n $(shell echo $$(( $$(nproc) + 1 ))) --dist worksteal

.PHONY: install install-dev run web worker migrate test test-sqlite test-postgres lint format clean

$(BIN)/.installed: requirements.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	touch $@

$(BIN)/.installed-dev: $(BIN)/.installed requirements-dev.txt tests/node/package-lock.json
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt
	# The S3-compatible server of the storage integration test (tests/s3server.py), pinned by its lock file.
	mkdir -p $(VENV)/s3server && cp tests/node/package.json tests/node/package-lock.json $(VENV)/s3server/
	npm ci --prefix $(VENV)/s3server --silent --no-audit --no-fund
	touch $@

install: $(BIN)/.installed
install-dev: $(BIN)/.installed-dev

migrate: install
	$(BIN)/python manage.py migrate --noinput

run: migrate
	$(BIN)/python manage.py seed_demo
	@echo ""
	@echo "  classifier_site: http://$(HOST):$(PORT)/"
	@echo "  log in as admin; the first password is in var/initial-admin-password.txt"
	@echo "  (or set DJANGO_SUPERUSER_USERNAME / DJANGO_SUPERUSER_PASSWORD before the first run)"
	@echo ""
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/honcho start --procfile Procfile --port $(PORT)

test: lint test-sqlite test-postgres

lint: install-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy classifier_site datasets trainer classification

# The whole suite on the embedded default (SQLite); then, on PostgreSQL, what rests on
# the database engine (locks, races, constraints, migrations) and a smoke of every app.
test-sqlite: install-dev
	env -u DATABASE_URL CONN_MAX_AGE=0 $(BIN)/python -m pytest $(PYTEST_PARALLEL) $(PYTEST_ARGS)

test-postgres: install-dev
	# No persistent connections: the live-server threads would keep the test database open.
	DATABASE_URL=$(TEST_POSTGRES_URL) CONN_MAX_AGE=0 $(BIN)/python -m pytest $(PYTEST_PARALLEL) -m "database or smoke" $(PYTEST_ARGS)

format: install-dev
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf var/ .pytest_cache .ruff_cache
