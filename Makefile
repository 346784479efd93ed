# mape-k — every target sets up what it needs (venv, package, Debian tools) first.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
FAULT  ?= error_burst
DEB_PKGS := prometheus prometheus-alertmanager docker-compose chromium chromium-driver postgresql

.PHONY: venv deps run demo test unit lint type bench docs quality all clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet -e '.[test,dev,ha]'
	touch $@

venv: $(VENV)/.installed

# Debian's prometheus / prometheus-alertmanager (promtool, amtool) and docker-compose (v1: it
# validates the compose file; no engine needed) for the integration
# tests and the demo, chromium and chromium-driver (chromedriver) for the real-browser
# tests (tests/browser_support.py), postgresql (its initdb is not on PATH) for the store's
# PostgreSQL tests (tests/pg_support.py): installed when missing and we are root, otherwise
# we say how.
deps:
	@missing=""; \
	for b in prometheus promtool prometheus-alertmanager amtool docker-compose chromium chromedriver; do \
	  command -v $$b >/dev/null 2>&1 || missing="$$missing $$b"; done; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing initdb"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian packages $(DEB_PKGS) (missing:$$missing)"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(DEB_PKGS)) >/dev/null \
	      || { echo "apt-get install $(DEB_PKGS) failed" >&2; exit 1; }; \
	  else \
	    echo "missing:$$missing — run: sudo apt-get install $(DEB_PKGS)" >&2; exit 1; \
	  fi; \
	fi

run: venv
	$(BIN)/mape-k run --mock --fault $(FAULT)

demo: venv deps
	$(BIN)/mape-k demo --fault $(FAULT)

# The unit tests on two workers (no shared state: fake clocks, temporary directories); the
# integration and e2e tests on two workers too, a whole file per worker (--dist loadfile: a
# file's module-scoped stack stays on one worker; every test has its own ports and
# directories). Serially they took ~12 min of wall time at under half a core.
test: venv deps
	$(BIN)/pytest -q -n 2 tests/unit
	$(BIN)/pytest -q -n 2 --dist loadfile tests/integration tests/e2e

unit: venv
	$(BIN)/pytest -q -n 2 tests/unit

lint: venv
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

type: venv
	$(BIN)/mypy

bench: venv deps
	@command -v wrk >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; } \
	  || echo "wrk missing (apt-get install wrk): the webhook ingest benchmark will say so" >&2
	$(BIN)/python -m bench --append docs/benchmarks.md

# The scenario suite (docs/quality.md + docs/quality/*.png; one JSON per episode in
# build/quality). SEEDS=N overrides every scenario's seed count; JOBS worker processes.
SEEDS ?=
JOBS  ?= $(shell nproc 2>/dev/null || echo 2)
quality: venv
	$(BIN)/pip install --quiet -e '.[quality]'
	$(BIN)/mape-k simulate --all --jobs $(JOBS) $(if $(SEEDS),--seeds $(SEEDS)) \
	  --report docs/quality.md --json-dir build/quality

docs: venv
	$(BIN)/python -c "from mape_k.config import reference_markdown; print(reference_markdown(), end='')" > docs/configuration.md

all: lint type test

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build *.egg-info
