# marsseg-edge: `make test` is what CI runs; `make demo` runs the whole mission end to end.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: test test-fast lint format install clean demo mutation

$(BIN)/python:
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) (or set PYTHON=...)"; exit 1; }
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml
	@echo "installing marsseg-edge[train,jax,edge,peers,ros,dev] into $(VENV)"
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[train,jax,edge,peers,ros,dev]'
	@touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

test: lint
	$(BIN)/python -m pytest -q

test-fast: lint
	$(BIN)/python -m pytest -q -m "not slow"

# Mutation testing of edge/ and the trainer's metrics, losses, data and augmentation (an hour or
# two on 2 cores; not part of `make test`). Survivors: `$(BIN)/mutmut results`; the ones judged
# equivalent are listed with their reason in docs/mutation.md.
mutation: $(STAMP)
	rm -rf mutants .cache/mutation-models
	MARSSEG_TEST_MODEL_CACHE=$(CURDIR)/.cache/mutation-models $(BIN)/mutmut run --max-children 2
	$(BIN)/mutmut results

# The whole mission on an embedded synthetic data set (DATA=path/to/mars_for_students.npz for
# the real one; EPOCHS=..., OUT=... and the rest: see tools/demo.sh).
demo:
	@echo "[0/8] install ($(VENV))"; start=$$(date +%s); \
	$(MAKE) --no-print-directory install && DEMO_START=$$start bash tools/demo.sh

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info mutants
