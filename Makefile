# genoflows: `make demo` sets everything up and runs the demo; `make test` sets up and runs the tests.
# Both are idempotent: when everything is installed, set-up takes a second.
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false

.PHONY: setup tools venv demo test lint bench server pools constraints clean

setup: tools venv

tools:
	@bash scripts/install-tools.sh

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	@touch $(STAMP)

demo: setup
	$(PY) -m genoflows.demo

test: setup
	$(PY) -m pytest

lint: venv
	$(VENV)/bin/ruff check .

# Every benchmark; each prints its ratios measured side by side in one run (the full-size ones take a while).
bench: setup
	$(PY) benchmarks/rnaseq_stream.py
	$(PY) benchmarks/giab_engine.py
	$(PY) benchmarks/regenie_engine.py
	$(PY) benchmarks/gwas_fanout.py
	$(PY) benchmarks/imputation_local.py
	$(PY) benchmarks/orchestration_overhead.py

server: venv
	$(VENV)/bin/prefect server start --host 127.0.0.1 --port 4200

# Create/update the work pools prefect.yaml deploys to (settings from deployments/pools.env); needs PREFECT_API_URL.
pools: venv
	$(PY) deployments/pools.py

# Pin the flow image's Python packages to what the tests ran with (after changing pyproject.toml).
constraints: venv
	$(PY) deployments/constraints.py

clean:
	rm -rf demo-output .pytest_cache
