# Refinery: `make quickstart` and `make test` install everything they need on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
TORCH  := torch==2.13.0
# the versions the tests passed with; refreshed only by `make lock`
LOCK   := constraints.txt
PYTEST_ARGS ?=

.PHONY: install quickstart test test-slow test-all lint lynx bench lock clean help

help:
	@echo "make quickstart  install everything, then run the quickstart (runs/quickstart-*/report.md)"
	@echo "make test        install everything, then run the default test suite"
	@echo "make test-slow   the slow tests (full quickstart, long training)"
	@echo "make lint        ruff"
	@echo "make lock        re-resolve the dependencies in a fresh venv and rewrite constraints.txt (deliberately)"
	@echo "make bench       install the peers (TRL, Math-Verify, trafilatura, resiliparse, datasketch) and run every benchmark, appending to benchmarks/RESULTS.md"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# torch first and pinned, so nothing later can pull a multi-GB CUDA build; everything within constraints.txt,
# so a fresh install gets the versions the tests passed with.
$(STAMP): pyproject.toml $(LOCK) | $(BIN)/python
	$(BIN)/pip install -q -c $(LOCK) "$(TORCH)"
	$(BIN)/pip install -q -c $(LOCK) -e ".[dev,sparse]"
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
	$(BIN)/pip install -q -c $(LOCK) -e ".[dev,bench]"
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

# Run `make lock` deliberately: after changing dependencies in pyproject.toml or the torch pin above, or to take
# newer releases on purpose. It resolves the torch pin and .[dev,sparse,bench] unconstrained in a throwaway venv and
# freezes them into constraints.txt; then run `make test` (and the benchmarks you rely on) and commit constraints.txt.
lock:
	@set -e; tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	$(PYTHON) -m venv "$$tmp/venv"; \
	"$$tmp/venv/bin/python" -m pip install -q --upgrade pip; \
	"$$tmp/venv/bin/pip" install -q "$(TORCH)"; \
	"$$tmp/venv/bin/pip" install -q -e ".[dev,sparse,bench]"; \
	{ sed -n '/^#/p' $(LOCK) 2>/dev/null || true; \
	  "$$tmp/venv/bin/pip" freeze --exclude-editable | grep -v -i '^refinery[= @]' | sed -E 's/^(torch==[^+]*)\+.*/\1/'; \
	} > "$$tmp/$(LOCK)"; \
	grep -qx "$(TORCH)" "$$tmp/$(LOCK)" || { echo "lock: $(TORCH) is not in the resolved set"; exit 1; }; \
	mv "$$tmp/$(LOCK)" $(LOCK); \
	echo "wrote $(LOCK) ($$(grep -vc '^#' $(LOCK)) packages); run 'make test' and commit it"

lint: install
	$(BIN)/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache
