# The two entry points of the README: `make repro` (set up, then run the whole pipeline on the defaults) and
# `make test` (set up, then run the whole test suite). Both create .venv first when it is missing.
SHELL := /bin/bash
VENV := .venv
ACTIVATE := source $(VENV)/bin/activate

.PHONY: setup repro test test-fast clean-outputs

setup:
	@bash scripts/setup.sh

repro: setup
	@$(ACTIVATE) && [ -d .git ] || git init -q
	@$(ACTIVATE) && time dvc repro
	@$(ACTIVATE) && python -m pipelines.summary

test: setup
	@$(ACTIVATE) && python -m pytest -q

test-fast: setup
	@$(ACTIVATE) && python -m pytest -q -m "not slow"

clean-outputs:
	rm -rf data/prepared data/pairs models reports metrics mlflow.db mlartifacts .cache/checkpoints
