# One place for every command a user or CI runs. `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
SENSORS ?= 3
# The local stack reads .env (secrets) when it exists; `make env` creates it.
ENVFILE := set -a; [ -f .env ] && . ./.env; set +a;

.PHONY: help env venv install model run stop status logs test test-unit lint lock bench bench-quick up down clean

help: ## List the targets
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  make %-12s %s\n", $$1, $$2}'

env: ## Write .env with random secrets; an existing .env keeps its values and gains missing keys
	@$(PYTHON) scripts/gen_env.py

# Installed from the hashed lock, so every machine gets the same packages (`make lock` re-resolves it).
$(VENV)/.installed: requirements-dev.lock
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet --require-hashes -r requirements-dev.lock
	@touch $@

venv: $(VENV)/.installed ## Create .venv with the pinned Python packages

install: venv ## Install everything the local stack needs (servers, packages, default model)
	bash localstack/install.sh
	@$(MAKE) --no-print-directory model

model: venv ## Train the default Prophet model into models/default.joblib (once)
	@[ -f models/default.joblib ] || $(PY) -m Models_analysis.train --csv Data_collection/demo_data.csv --out models/default.joblib

run: install env ## Run the whole pipeline without Docker (Ctrl+C stops it); SENSORS=3
	@$(ENVFILE) $(PY) -m localstack run --sensors $(SENSORS)

stop: ## Stop the local stack's servers and services
	@$(ENVFILE) $(PY) -m localstack stop

status: ## Show what the local stack runs
	@$(ENVFILE) $(PY) -m localstack status

test: install lint ## Lint, type-check, then run every test on the real local stack (what CI runs)
	$(PY) -m pytest

test-unit: install ## Run the tests that need no server (the Compose tests use the CLI `make install` builds)
	$(PY) -m pytest tests/unit

# One resolution for every lock: the venv's (requirements-dev.lock, what tests and the local stack
# use) first, then each image's, constrained to it, so an image runs the versions the tests ran.
LOCK := $(VENV)/bin/uv pip compile --quiet --universal --python-version 3.11 --generate-hashes
LOCKED := Data_collection Server Models_analysis Dashboard

lock: venv ## Re-resolve the hashed locks (requirements-dev.lock, <service>/requirements.lock) after a requirements change
	$(LOCK) requirements-dev.txt -o requirements-dev.lock
	@for service in $(LOCKED); do \
		$(LOCK) -c requirements-dev.lock $$service/requirements.txt -o $$service/requirements.lock || exit 1; \
	done

lint: venv ## Lint, check formatting and type-check (ruff, mypy)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy .

bench: install ## Benchmarks on a throwaway local stack (~25 min, 20-min soak); results in bench/results/
	$(PY) -m bench

bench-quick: install ## The benchmarks, short (~3 min, 1-min soak)
	$(PY) -m bench --quick

up: env ## Start everything with Docker Compose (SENSORS sensors: .env, or make up SENSORS=10)
	docker compose up --build -d

down: ## Stop the Docker Compose stack
	docker compose down

clean: stop ## Remove the local stack's data, the venv and caches
	rm -rf .stack .venv .cache
