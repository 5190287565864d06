# The two commands: `make demo` (the main job) and `make test` (the test suite).
# Both create a venv on first use and install a tested dependency set into it, chosen by the
# interpreter found: Python 3.11 takes the pinned set (requirements.lock: jax 0.10.2,
# ArviZ 0.23), Python 3.12 or 3.13 the current releases (requirements-py312.lock: jax 0.12,
# ArviZ 1.x). PYTHON=... picks another interpreter, VENV=... another venv folder,
# TESTS=fast the fast subset of the suite (what CI runs on the current set).
PYTHON ?= $(shell for p in python3.11 python3; do \
	  $$p -c 'import sys' >/dev/null 2>&1 && { command -v $$p; break; }; done)
PY_VERSION := $(shell $(PYTHON) -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)
VENV ?= .venv
BIN := $(VENV)/bin
# One stamp per Python version: asking for another interpreter rebuilds the venv.
STAMP := $(VENV)/.installed-$(PY_VERSION)
ifeq ($(PY_VERSION),3.11)
LOCK := requirements.lock
# lm-parity: the CPU build of PyTorch lies on this disk for Python 3.11 only.
EXTRAS := lm,lm-parity,test
else
LOCK := requirements-py312.lock
EXTRAS := lm,test
endif

# TESTS=fast: core, every engine's contract, each engine's correctness smoke tests, the
# command line and report writing (with the browser checks); a few minutes.
FAST_TESTS := tests/core tests/contract tests/test_notebooks_and_cli.py \
	tests/inference/mcmc/test_nuts_correctness.py \
	tests/inference/smc/test_particle_filter.py tests/inference/smc/test_tempered.py \
	tests/inference/vi/test_flow_vi.py tests/inference/vi/test_coin.py \
	tests/diagnostics/test_coverage_driver.py tests/diagnostics/test_calibration_checks.py \
	tests/reports
TESTS ?= all
ifeq ($(TESTS),fast)
PYTEST_ARGS ?= -m "not slow" $(FAST_TESTS)
else
PYTEST_ARGS ?=
endif

.PHONY: demo test bench venv clean check-python

check-python:
	@test -n "$(PY_VERSION)" || { echo "No Python found (tried python3.11, python3); set PYTHON=..." >&2; exit 1; }
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
	  { echo "ppl needs Python >= 3.11; $(PYTHON) is $(PY_VERSION)" >&2; exit 1; }

$(STAMP): pyproject.toml $(LOCK) | check-python
	@if [ -x $(BIN)/python ] && [ "$$($(BIN)/python -c 'import sys; print("%d.%d" % sys.version_info[:2])')" != "$(PY_VERSION)" ]; then \
	  echo "$(VENV) was made by another Python; making it again with $(PYTHON)" \
	    "(VENV=... keeps venvs side by side)"; rm -rf $(VENV); fi
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	@echo "installing ppl and $(LOCK) into $(VENV) (log: $(VENV)/install.log)"
	@{ $(BIN)/python -m pip install --upgrade pip && \
	   $(BIN)/python -m pip install -c $(LOCK) -e ".[$(EXTRAS)]"; } > $(VENV)/install.log 2>&1 || \
	  { tail -n 40 $(VENV)/install.log; exit 1; }
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/ppl demo --out reports/demo

test: $(STAMP)
	$(BIN)/ruff check --quiet .
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -c $(LOCK) -e ".[bench]"
	$(BIN)/python bench/run_all.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) reports build *.egg-info
