# Refinery: `make quickstart` and `make test` install everything they need on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
TORCH  := torch==2.13.0
PYTEST_ARGS ?=

.PHONY: install quickstart test test-slow test-all lint lynx bench clean help

help:
	@echo "make quickstart  install everything, then run the quickstart (runs/quickstart-*/report.md)"
	@echo "make test        install everything, then run the default test suite"
	@echo "make test-slow   the slow tests (full quickstart, long training)"
	@echo "make lint        ruff"
	@echo "make bench       install the peers (TRL, Math-Verify, trafilatura, resiliparse, datasketch) and run every benchmark, appending to benchmarks/RESULTS.md"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# torch first and pinned, so nothing later can pull a multi-GB CUDA build.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[dev,sparse]"
	@touch $(STAMP)

install: $(STAMP) lynx

# lynx renders HTML with its layout (Nemotron-CC-Math); installed with apt-get when we are root.
lynx:
	@if command -v lynx >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing lynx with apt-get"; \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq lynx >/dev/null) \
		|| echo "warning: could not install lynx; the data wing falls back to its pure-Python renderer"; \
	else \
		echo "lynx is not installed and we are not root: run 'sudo apt-get install lynx' (the data wing needs it;"; \
		echo "without it a pure-Python renderer is used)"; \
	fi

quickstart: install
	$(BIN)/refinery quickstart

test: install
	$(BIN)/python -m pytest -q -m "not slow" $(PYTEST_ARGS)

test-slow: install
	$(BIN)/python -m pytest -q -m slow $(PYTEST_ARGS)

test-all: install
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

bench: install
	$(BIN)/pip install -q -e ".[dev,bench]"
	$(BIN)/python benchmarks/bench_generation.py --record
	$(BIN)/python benchmarks/bench_math_verify.py --record
	$(BIN)/python benchmarks/bench_code_sandbox.py --record
	$(BIN)/python benchmarks/bench_rl_vs_trl.py --record
	$(BIN)/python benchmarks/bench_rm_vs_trl.py --record
	$(BIN)/python benchmarks/bench_rm_recipes.py --record
	$(BIN)/python benchmarks/bench_rm_real.py --record
	$(BIN)/python benchmarks/bench_sparsity.py --record
	$(BIN)/python benchmarks/bench_puzzle.py --record
	$(BIN)/python benchmarks/bench_math_extract.py --record
	$(BIN)/python benchmarks/bench_dedup.py --record
	$(BIN)/python benchmarks/bench_decontam.py --record
	$(BIN)/python benchmarks/bench_cultureguard_filters.py --record

lint: install
	$(BIN)/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache
