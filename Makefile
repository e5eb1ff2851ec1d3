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

check: $(VENV)/.dev
	DJANGO_SETTINGS_MODULE=cms.settings.test $(PY) manage.py check
	DJANGO_SETTINGS_MODULE=cms.settings.test $(PY) manage.py makemigrations --check --dry-run

# The whole suite on SQLite; then, when TEST_DATABASE_URL is set, the database tests again
# on PostgreSQL (SQLite-specific, browser and slow process tests are left out there, to keep
# CI short). The MongoDB tier (TEST_MONGODB_URI) needs no Django database: it runs in the
# first pass only.
test: lint check
	env -u TEST_DATABASE_URL $(BIN)/pytest --durations=15
	@if [ -n "$$TEST_DATABASE_URL" ]; then \
		echo "== again on PostgreSQL ($$TEST_DATABASE_URL)"; \
		env -u TEST_MONGODB_URI $(BIN)/pytest -m "not browser and not sqlite_only and not slow"; \
	else \
		echo "TEST_DATABASE_URL is not set: the PostgreSQL run is skipped."; \
	fi

bench: $(VENV)/.dev
	$(PY) bench/queue.py
	$(PY) bench/monitor.py
	$(PY) bench/pipeline.py
	$(PY) bench/request_page.py
	$(PY) bench/image_sizes.py
	$(PY) bench/metrics.py

clean:
	rm -rf $(VENV) .venv-mongo var .pytest_cache .ruff_cache
