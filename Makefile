# One place for every command a user or CI runs. `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
SENSORS ?= 3
# `make run` replicas: bridges (one shared MQTT subscription), model services (one Kafka consumer group)
# and Kafka nodes (1, or 3: a KRaft cluster of three brokers and controllers, as docker-compose.cluster.yml).
BRIDGES ?= 1
MODELS ?= 1
KAFKA_BROKERS ?= 1
# The local stack reads .env (secrets) when it exists; `make env` creates it.
ENVFILE := set -a; [ -f .env ] && . ./.env; set +a;

.PHONY: help env venv install model run stop status logs test test-unit lint lock mutation bench bench-quick up down clean

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

run: install env ## Run the whole pipeline without Docker (Ctrl+C stops it); SENSORS=3 BRIDGES=1 MODELS=1 KAFKA_BROKERS=1
	@$(ENVFILE) KAFKA_BROKERS=$(KAFKA_BROKERS) $(PY) -m localstack run --sensors $(SENSORS) --bridges $(BRIDGES) --models $(MODELS)

stop: ## Stop the local stack's servers and services
	@$(ENVFILE) $(PY) -m localstack stop

status: ## Show what the local stack runs
	@$(ENVFILE) $(PY) -m localstack status

# Workers of pytest-xdist: each starts a stack of its own (tests/conftest.py); the modules that
# start one more run whole on one worker (--dist loadgroup, their xdist_group marks).
TEST_WORKERS ?= 2

test: install lint ## Lint, type-check, then run every test on the real local stack (what CI runs)
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadgroup

test-unit: install ## Run the tests that need no server (the Compose tests use the CLI `make install` builds)
	$(PY) -m pytest tests/unit

# Mutation testing of the delivery core ([tool.mutmut] in pyproject.toml says which modules and which
# unit tests): the score, then every surviving mutant's diff (tests/mutation-survivors.md says why each
# is harmless). Niced, since it shares the machine; mutants/ (mutmut's copy) is removed afterwards, or
# kept with MUTANTS_KEEP=1 for `mutmut browse` (remove it before `make lint`).
mutation: venv ## Mutation testing of contract, kafka, ingest, results and scorer against the unit tests (minutes)
	rm -rf mutants
	nice -n 15 $(VENV)/bin/mutmut run --max-children 2 > /dev/null
	@$(VENV)/bin/mutmut export-cicd-stats > /dev/null
	@$(PY) -c 'import json; s = json.load(open("mutants/mutmut-cicd-stats.json")); \
		k, t = s["killed"] + s["timeout"], s["total"] - s["skipped"]; \
		print("mutation score: %d/%d killed (%.1f%%); survived %d, no tests %d" \
			% (k, t, 100 * k / t, s["survived"], s["no_tests"]))'
	@for mutant in $$($(VENV)/bin/mutmut results | sed -n 's/^ *\([^ ]*\): \(survived\|no tests\)$$/\1/p'); do \
		$(VENV)/bin/mutmut show $$mutant; \
	done
	@[ -n "$(MUTANTS_KEEP)" ] || rm -rf mutants

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

bench: install ## Benchmarks on a throwaway local stack (~70 min: a 20-min soak, a month of storage, the backtest); results in bench/results/
	$(PY) -m bench

bench-quick: install ## The benchmarks, short (~3 min, 1-min soak)
	$(PY) -m bench --quick

up: env ## Start everything with Docker Compose (SENSORS sensors: .env, or make up SENSORS=10)
	docker compose up --build -d

down: ## Stop the Docker Compose stack
	docker compose down

clean: stop ## Remove the local stack's data, the venv and caches
	rm -rf .stack .venv .cache
