# Two commands for a newcomer: `make demo` and `make test`. Everything else is set up on demand.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
# Debian packages some tests use (promtool, a real Prometheus). Installed when apt-get
# is available and we are root; otherwise those tests skip with a clear reason.
DEBIAN_PACKAGES ?= prometheus

.PHONY: help venv system-deps test lint typecheck pytest demo bench clean keys broker

help:
	@echo "make demo   - run the kill switch on embedded defaults (broker, simulator, daemon)"
	@echo "make test   - ruff, mypy --strict, pytest (sets everything up first)"
	@echo "make bench  - benchmarks (not part of make test)"
	@echo "make keys   - the example configuration's demo keys (config/demo/, missing ones only)"
	@echo "make broker - the embedded Kafka broker in the foreground on 127.0.0.1:$(BROKER_PORT)"

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

venv: $(STAMP)

system-deps:
	@missing=""; for p in $(DEBIAN_PACKAGES); do \
	  dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  echo "installing Debian packages:$$missing"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null) \
	    || echo "warning: could not install$$missing; tests that need them will skip"; \
	else echo "note: Debian packages$$missing not installed; tests that need them will skip"; fi

lint: $(STAMP)
	$(VENV)/bin/ruff check killswitch tests bench
	$(VENV)/bin/ruff format --check killswitch tests bench

typecheck: $(STAMP)
	$(VENV)/bin/mypy

# Workers for `make test` (pytest-xdist); PYTEST_WORKERS=0 runs in one process.
PYTEST_WORKERS ?= 3

pytest: $(STAMP) system-deps
	$(PY) -m pytest -n $(PYTEST_WORKERS) --dist worksteal

test: lint typecheck pytest

demo: $(STAMP)
	$(PY) -m killswitch demo --config config/killswitch.example.toml

# Running it yourself (README, "Run it yourself"): keys, then a broker in its own terminal.
CONFIG      ?= config/killswitch.example.toml
BROKER_PORT ?= 9092

keys: $(STAMP)
	$(VENV)/bin/killswitch keygen --config $(CONFIG)

broker: $(STAMP)
	$(VENV)/bin/killswitch broker --port $(BROKER_PORT)

bench: $(STAMP)
	$(PY) -m bench

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis *.egg-info
