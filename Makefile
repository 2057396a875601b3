# The two commands that matter: `make up` (the platform, locally) and `make test` (the suite).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install browser up test lint format bench package clean

$(STAMP): requirements.txt requirements-agent.txt requirements-dev.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

## Start moto (as AWS) + the API locally, create a dev user, print PRISM_API_URL/KEY.
up: install
	$(BIN)/prism dev up --demo

## Debian's chromium and its driver, for the console's browser tests: installed when missing
## (needs root and apt, as CI has).
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
			chromium chromium-driver >/dev/null; }

## Lint, then the whole suite (unit, functional on moto, e2e with real processes, the console
## in headless chromium).
test: install browser
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest -n 2 -q

lint: install
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format . && $(BIN)/ruff check --fix .

bench: install
	$(BIN)/python benchmarks/api.py

## CloudFormation/SAM for a stage (STAGE=dev|prod) in out/<stage>/, checked by cfn-lint. The
## merge template is bound to the stage (its Stage parameter accepts only that one) and sized by
## infra/sizing.json.
STAGE ?= dev
package: install
	rm -rf out/$(STAGE)
	$(BIN)/python -m prism.dev.merge_template $(STAGE) out/merge-$(STAGE).json
	AWS_DEFAULT_REGION=$${AWS_DEFAULT_REGION:-us-east-1} $(BIN)/chalice package --stage $(STAGE) \
		--merge-template out/merge-$(STAGE).json out/$(STAGE)
	$(BIN)/cfn-lint out/$(STAGE)/sam.json

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis .prism
