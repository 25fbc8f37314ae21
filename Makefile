# Everything runs in a project-local virtualenv that the first target creates.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cksum < pyproject.toml | cut -d' ' -f1)
SAMPLE := data/sample/online_retail_sample.parquet

export PREFECT_SERVER_ANALYTICS_ENABLED := false
export GX_ANALYTICS_ENABLED := false
export MPLBACKEND := Agg

.PHONY: setup run test bench ui clean-artifacts

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	rm -f $(VENV)/.installed-* && touch $@

run: setup
	$(BIN)/segment run --input $(SAMPLE) --artifacts artifacts

test: setup
	$(BIN)/python -m pytest

bench: setup
	$(BIN)/python benchmarks/bench.py
	$(BIN)/python benchmarks/monthly.py

# The UI of the local server every `segment` command reports to (started here if it is not running).
ui: setup
	$(BIN)/segment server start --open

clean-artifacts:
	find artifacts -mindepth 1 -not -name .gitkeep -delete
