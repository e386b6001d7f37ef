# Every target creates .venv itself: a fresh machine needs only Python 3.11+ and make.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: serve cluster test test-stock lint typecheck check clean vendor vendor-check

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

serve: $(STAMP)  ## run the server (autocreate on, 127.0.0.1:2939); ARGS="--port 8080" to change
	$(BIN)/trickle-trio serve $(ARGS)

cluster: $(STAMP)  ## N servers behind HAProxy (apt-get install haproxy); ARGS="--workers 4"
	$(BIN)/trickle-trio cluster $(ARGS)

test: $(STAMP)  ## lint, type-check and run the test suite
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/pytest $(PYTEST_ARGS)

test-stock: $(STAMP)  ## the test suite again with every server on stock hypercorn (fast path off)
	$(BIN)/pytest --fast-path=off $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

# The watch page's player (mpegts.js, from the npm registry) is vendored into the package,
# with its licences, so that the page needs no download at run time and pip installs it.
# `make vendor` refreshes it from web/package-lock.json; `make vendor-check` proves that the
# committed files are exactly what that step makes.
VENDOR := trickle_trio/http/watch/vendor
NPM_MODULES := web/node_modules

vendor:  ## copy mpegts.js and its licences from npm (web/package-lock.json) into the package
	cd web && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error
	cp $(NPM_MODULES)/mpegts.js/dist/mpegts.js $(VENDOR)/mpegts.js
	cp $(NPM_MODULES)/mpegts.js/dist/mpegts.js.LICENSE.txt $(VENDOR)/mpegts.js.LICENSE.txt
	cp $(NPM_MODULES)/mpegts.js/LICENSE $(VENDOR)/LICENSE.mpegts.js
	cp $(NPM_MODULES)/es6-promise/LICENSE $(VENDOR)/LICENSE.es6-promise
	cp $(NPM_MODULES)/events/LICENSE $(VENDOR)/LICENSE.events

vendor-check: vendor  ## fail if the vendored files differ from what `make vendor` makes
	git diff --exit-code --stat -- $(VENDOR)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
