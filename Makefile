# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
STAMP := $(VENV)/.har_colab_installed
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

# the suite in two processes (its tests mostly wait on CPU-bound subprocesses); any test that hangs fails after 10 min
PYTEST_FLAGS := -q -m "not slow" -n 2 --dist worksteal --timeout 600 --durations 15

.PHONY: setup demo test test-colab test-slow check-sync readme nbtest pytest export clean-nbs bench dist

setup: $(STAMP)

$(STAMP): settings.ini setup.py constraints.txt
	@if ! command -v ffmpeg >/dev/null || ! command -v unar >/dev/null; then \
	  echo "installing system packages: ffmpeg (torchcodec) and unar (RAR archives)"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq ffmpeg unar >/dev/null; fi
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e ".[dev]"
	@touch $@

demo: setup
	$(BIN)/har-colab demo --run-dir runs/demo

readme: setup
	$(PY) .ci/readme.py

export: setup
	$(BIN)/nbdev_export

check-sync: setup
	$(PY) .ci/check_sync.py

nbtest: setup
	$(BIN)/nbdev_test --n_workers 2 --timing

pytest: setup
	$(PY) -m pytest tests/ $(PYTEST_FLAGS)

test: setup
	$(PY) .ci/check_sync.py
	# one OpenMP thread per notebook process: two processes on two cores would otherwise fight over them
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(BIN)/nbdev_test --n_workers 2 --skip_file_re "^(colab_hmdb51|own_dataset|compare_models)"
	$(PY) -m pytest tests/ $(PYTEST_FLAGS)

# The Colab twin: our wheel and sdist pip-installed into Python 3.13 with Colab's packages, then the non-slow suite and
# the tutorial notebooks (SMOKE) against the installed package (.ci/colab_twin.py; its venv is .venv-colab)
test-colab: setup
	$(PY) .ci/colab_twin.py

# sdist and wheel in dist/, checked by twine (what the release workflow publishes); needs only build and twine
DIST_PYTHON ?= $(if $(wildcard $(PY)),$(PY),$(PYTHON))
dist:
	rm -rf dist
	$(DIST_PYTHON) -m build --outdir dist .
	$(DIST_PYTHON) -m twine check --strict dist/*

test-slow: setup
	$(PY) -m pytest tests/ -q -m slow

bench: setup
	$(PY) benchmarks/run_all.py
