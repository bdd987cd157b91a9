# nightly-recs: `make run` (a full nightly run on demo data), `make test` (the test suite).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
TORCH_PIP_ARGS ?=
export NIGHTLY_RECS_HOME ?= $(CURDIR)/var
export HF_HUB_OFFLINE = 1
export TRANSFORMERS_OFFLINE = 1
BIN := $(VENV)/bin

.PHONY: setup run test lint bench bench-ingest bench-embed bench-score bench-quality airflow clean

setup: $(VENV)/.installed

# Torch first (the CPU wheel by default; override TORCH_SPEC/TORCH_PIP_ARGS for CUDA), then the pinned rest.
$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check $(TORCH_PIP_ARGS) "$(TORCH_SPEC)"
	$(BIN)/pip install -q --disable-pip-version-check -c constraints.txt "$(TORCH_SPEC)" -e ".[dev]"
	touch $@

run: setup
	$(BIN)/nightly-recs demo-data --if-empty
	$(BIN)/nightly-recs dag-run --date next

test: setup
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check pipeline dags tests bench

bench: bench-ingest bench-embed bench-score bench-quality

bench-ingest: setup
	$(BIN)/python bench/bench_ingest.py

bench-embed: setup
	$(BIN)/python bench/bench_embed.py

bench-score: setup
	$(BIN)/python bench/bench_score.py

bench-quality: setup
	$(BIN)/python bench/bench_quality.py

airflow: setup
	$(BIN)/nightly-recs airflow-standalone

clean:
	rm -rf $(NIGHTLY_RECS_HOME)
