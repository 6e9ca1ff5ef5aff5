# Two commands on a fresh clone: `make demo` and `make test`. Both create .venv on first use.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-lens-pipeline
export LENS_DATA_DIR ?= $(CURDIR)/data
export DAGSTER_HOME ?= $(CURDIR)/dagster_home
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install demo lvm-corpus browser test test-fast lint fmt ui bench clean

install: $(STAMP)

# torch is installed first and pinned: an unpinned torch pulls GBs of CUDA packages.
# setup.py builds the C scanner of raw-run lines (lens_core/ingest/_canonscan.c) and the TREC reader of
# `lens-eval trec` (lens_core/measures/_trecscan.c): a change to any of them reinstalls.
$(STAMP): pyproject.toml setup.py lens_core/ingest/_canonscan.c lens_core/measures/_trecscan.c
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check torch==2.13.0
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test,engine,postgres,s3,celery]'
	@touch $(STAMP)

# The instance config serialises the Lens jobs (DST spring-forward pile-up, schedules/README.md).
$(DAGSTER_HOME)/dagster.yaml: schedules/dagster.yaml.example
	@mkdir -p $(DAGSTER_HOME)
	@test -f $@ || cp $< $@

demo: $(STAMP) lvm-corpus $(DAGSTER_HOME)/dagster.yaml
	@# exit 3 = the run completed and a blocking gate kept the last green bundle (reported above)
	$(PY) -m lens_cli run --source $${DATA_SOURCE:-local} --with-lvm || [ $$? -eq 3 ]

# The LVM's default corpus is the Linux kernel documentation from Debian's linux-doc-6.1 when it
# can be installed; otherwise Python's own documentation topics (pydoc_data) are used.
lvm-corpus:
	@if [ -d /usr/share/doc/linux-doc-6.1/Documentation ]; then \
	  echo "LVM corpus: Debian linux-doc-6.1 (kernel documentation) is installed"; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  echo "LVM corpus: installing Debian's linux-doc-6.1 (kernel documentation) with apt-get ..."; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq linux-doc-6.1 >/dev/null) \
	    && echo "LVM corpus: linux-doc-6.1 installed" \
	    || echo "LVM corpus: apt-get failed; falling back to Python's pydoc topics"; \
	else \
	  echo "LVM corpus: apt-get not available (or not root); using Python's pydoc topics"; \
	fi

# Tests never see ./data or ./dagster_home: pytest runs without the exports above (tests/conftest.py
# gives the session its own temporary LENS_DATA_DIR and DAGSTER_HOME and fails the run if either
# tree changed byte-for-byte).
TEST_ENV := env -u LENS_DATA_DIR -u DAGSTER_HOME

# The browser tests drive Debian's Chromium headless (tests/browser.py): installed here when apt
# can (as `make demo` installs the kernel docs), so `make test` runs them rather than skipping.
browser:
	@if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then \
	  echo "browser tests: Chromium and chromedriver are installed"; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  echo "browser tests: installing Debian's chromium and chromium-driver with apt-get ..."; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null) \
	    && echo "browser tests: Chromium installed" \
	    || echo "browser tests: apt-get failed; the browser tests will be skipped (CI fails them)"; \
	else \
	  echo "browser tests: apt-get not available (or not root): install chromium chromium-driver to run them"; \
	fi

test: $(STAMP) lint browser
	$(TEST_ENV) $(PY) -m pytest -q

# ruff check and format (pyproject.toml); `make fmt` applies both.
lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

fmt: $(STAMP)
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

test-fast: $(STAMP)
	$(TEST_ENV) $(PY) -m pytest -q -m "not e2e"

bench: $(STAMP)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[bench]'
	$(PY) benchmarks/run_all.py --out benchmarks/REPORT.md

ui: $(STAMP) $(DAGSTER_HOME)/dagster.yaml
	$(VENV)/bin/dagster dev -w workspace.yaml -h 127.0.0.1 -p 3000

clean:
	rm -rf $(LENS_DATA_DIR) $(DAGSTER_HOME) .pytest_cache
