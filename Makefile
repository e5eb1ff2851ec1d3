# The two commands a newcomer needs: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PY := $(BIN)/python

.PHONY: run test lint check bench clean

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# Stamp files re-install only when a requirements file changes.
$(VENV)/.runtime: requirements.txt | $(BIN)/activate
	$(BIN)/pip install --quiet -r requirements.txt
	touch $@

$(VENV)/.dev: requirements.txt requirements-dev.txt | $(BIN)/activate
	$(BIN)/pip install --quiet -r requirements-dev.txt
	touch $@ $(VENV)/.runtime

run: $(VENV)/.runtime
	$(PY) manage.py migrate --noinput
	$(PY) manage.py ensure_admin
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/honcho start

lint: $(VENV)/.dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

check: $(VENV)/.dev
	DJANGO_SETTINGS_MODULE=cms.settings.test $(PY) manage.py check
	DJANGO_SETTINGS_MODULE=cms.settings.test $(PY) manage.py makemigrations --check --dry-run

# The whole suite on SQLite; then, when TEST_DATABASE_URL is set, the tests that touch the
# database again on PostgreSQL, the crash, freeze and fault-injection ones included (those
# without the database, SQLite-specific and browser tests ran in the first pass only). The
# MongoDB tier (TEST_MONGODB_URI) runs in the first pass only. Each pass runs its tests in
# TEST_PROCESSES parallel processes (pytest-xdist), then the timing-sensitive ones (marked
# `serial` in tests/conftest.py) one at a time.
TEST_PROCESSES ?= 2
PARALLEL := -n $(TEST_PROCESSES) -m "not serial"

# axe-core, which the browser tests inject into Karasu's screens to check WCAG 2.1 A/AA.
node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund --silent
	touch $@

test: lint check node_modules/.installed
	env -u TEST_DATABASE_URL $(BIN)/pytest $(PARALLEL)
	env -u TEST_DATABASE_URL $(BIN)/pytest -m serial --durations=15
	@if [ -n "$$TEST_DATABASE_URL" ]; then \
		echo "== again on PostgreSQL ($$TEST_DATABASE_URL)"; \
		export KARASU_DATABASE_TESTS_ONLY=1; \
		env -u TEST_MONGODB_URI $(BIN)/pytest $(PARALLEL) && \
		env -u TEST_MONGODB_URI $(BIN)/pytest -m "serial and not browser" --durations=10; \
	else \
		echo "TEST_DATABASE_URL is not set: the PostgreSQL run is skipped."; \
	fi

bench: $(VENV)/.dev
	$(PY) bench/queue.py
	$(PY) bench/monitor.py
	$(PY) bench/pipeline.py
	$(PY) bench/request_page.py
	$(PY) bench/image_sizes.py
	$(PY) bench/search.py
	$(PY) bench/metrics.py
	$(PY) bench/provenance.py

clean:
	rm -rf $(VENV) .venv-mongo var .pytest_cache .ruff_cache
