# nightly-recs: `make run` (a full nightly run on demo data), `make test` (the test suite).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
TORCH_PIP_ARGS ?=
export NIGHTLY_RECS_HOME ?= $(CURDIR)/var
# the local service stack's state, data and logs (`make stack`)
STACK_DIR ?= $(CURDIR)/var-stack
export HF_HUB_OFFLINE = 1
export TRANSFORMERS_OFFLINE = 1
BIN := $(VENV)/bin

.PHONY: setup browser run test test-stack test-venv lint bench bench-ingest bench-embed bench-score bench-storage bench-celery \
	bench-quality bench-ddp bench-backtest bench-incremental bench-shards bench-scale airflow stack \
	stack-down clean

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

# Headless Chromium for the HTML report's browser test (Debian, as root); optional: the test skips without it.
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
		apt-get update -qq && apt-get install -y -qq chromium >/dev/null; } || \
		echo "chromium not installed: the headless-browser report test will be skipped"

test: setup browser
	$(BIN)/python -m pytest -q -m "not stack" $(PYTEST_ARGS)

# The tests marked `stack`: whole nights against the local service stack (PostgreSQL, S3, MLflow server) and the
# multi-worker Airflow (CeleryExecutor, Redis: installed from Debian's packages when missing, as root).
test-stack: setup
	$(BIN)/python -m pytest -q -m stack $(PYTEST_ARGS)

# A night's logged model loads in a fresh virtualenv built from its own requirements.txt (network: PyPI).
test-venv: setup
	NIGHTLY_RECS_VENV_TESTS=1 $(BIN)/python -m pytest -q tests/test_operator_view.py -k fresh_virtualenv

lint: setup
	$(BIN)/ruff check pipeline dags tests bench

bench: bench-ingest bench-embed bench-score bench-shards bench-storage bench-celery bench-quality bench-ddp bench-backtest \
	bench-incremental bench-scale

bench-ingest: setup
	$(BIN)/python bench/bench_ingest.py

bench-embed: setup
	$(BIN)/python bench/bench_embed.py

bench-score: setup
	$(BIN)/python bench/bench_score.py

bench-shards: setup
	$(BIN)/python bench/bench_shards.py

# the issue's size (1M users, 100K items, 50M events: hours on 2 cores); e.g. SCALE_ARGS="--users 100000 --items 10000 --events 5000000"
bench-scale: setup
	$(BIN)/python bench/bench_scale.py $(SCALE_ARGS)

bench-storage: setup
	$(BIN)/python bench/bench_storage.py

bench-celery: setup
	$(BIN)/python bench/bench_celery.py

bench-quality: setup
	$(BIN)/python bench/bench_quality.py

bench-ddp: setup
	$(BIN)/python bench/bench_ddp.py

# A short backtest (a few nights of ml-latest-small, real timestamps): next-day quality per variant and baseline.
bench-backtest: setup
	$(BIN)/python bench/bench_backtest.py

bench-incremental: setup
	$(BIN)/python bench/bench_backtest.py --source ml-1m-size --from 2026-04-23 --to 2026-04-30 \
		--variants warm_start,warm_incremental --name backtest-incremental-ml-1m-size

airflow: setup
	$(BIN)/nightly-recs airflow-standalone

# PostgreSQL, S3 (moto) and an MLflow server on 127.0.0.1, in the background; prints the settings to source.
stack: setup
	$(BIN)/nightly-recs stack up --folder $(STACK_DIR)

stack-down:
	$(BIN)/nightly-recs stack down --folder $(STACK_DIR)

clean:
	rm -rf $(NIGHTLY_RECS_HOME)
