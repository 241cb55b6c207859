# Two commands on a fresh machine:
#   make run    start the monitor on SQLite with the built-in demo desk (http://localhost:9799/metrics)
#   make test   lint, type-check and run the whole suite (installs PostgreSQL for its tests)

PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
SUM     = $(shell cat pyproject.toml | cksum | cut -d' ' -f1)
STAMP   = $(VENV)/.installed-test-$(SUM)
RUN_STAMP = $(VENV)/.installed-run-$(SUM)

.PHONY: run test test-unit test-faults lint system-deps bench bench-quick lock clean

# `make run` installs only what running needs; the test tools come with `make test`
$(RUN_STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e .
	touch $@

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	rm -f $(VENV)/.installed-*
	touch $@ $(RUN_STAMP)

run: $(RUN_STAMP)
	$(BIN)/sla-monitor run $(ARGS)

# requirements.lock: the exact versions and hashes the container installs (Dockerfile);
# regenerate after changing dependencies in pyproject.toml
lock:
	$(PYTHON) -m venv $(VENV)-lock
	$(VENV)-lock/bin/pip install --quiet pip-tools
	$(VENV)-lock/bin/pip-compile --quiet --generate-hashes --strip-extras --no-emit-index-url \
	  --no-emit-find-links --extra postgres --output-file requirements.lock pyproject.toml

# Servers the tests run for real (Debian packages): PostgreSQL for the store, Dovecot for
# IMAP, Prometheus (+ promtool) and Alertmanager (+ amtool) for rules, alerts and dashboards.
# The tests start and stop their own instances on free loopback ports in temp dirs.
SYSTEM_PACKAGES = postgresql dovecot-imapd openssl prometheus prometheus-alertmanager chromium fonts-dejavu-core
system-deps:
	@if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || ! command -v dovecot >/dev/null 2>&1 \
	    || ! command -v openssl >/dev/null 2>&1 || ! command -v promtool >/dev/null 2>&1 \
	    || ! command -v prometheus-alertmanager >/dev/null 2>&1 || ! command -v chromium >/dev/null 2>&1; then \
	  echo "installing $(SYSTEM_PACKAGES) (for the tests)"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq \
	    --no-install-recommends $(SYSTEM_PACKAGES) >/dev/null; \
	fi

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# tests/unit, tests/integration (real servers), tests/e2e (the real process): all three
test: system-deps lint
	$(BIN)/pytest $(PYTEST_ARGS)

# The unit layer alone: no servers, no files, seconds (docs/architecture.md)
test-unit: $(STAMP)
	$(BIN)/pytest tests/unit $(PYTEST_ARGS)

# Every fault-injection round docs/reliability.md reports (make test runs a few of each).
test-faults: system-deps $(STAMP)
	SLA_MONITOR_FAULT_ROUNDS=full $(BIN)/pytest -m faults -s $(PYTEST_ARGS)

# Benchmarks (docs/benchmarks.md): figures next to baselines measured in the same run.
bench: system-deps $(STAMP)
	$(BIN)/python -m bench.run $(BENCH_ARGS)

bench-quick: system-deps $(STAMP)
	$(BIN)/python -m bench.run --quick $(BENCH_ARGS)

clean:
	rm -rf $(VENV) $(VENV)-lock .mypy_cache .ruff_cache .pytest_cache .hypothesis sla-monitor.db*
