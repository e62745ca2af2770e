# One surface for people and CI: `make demo`, `make test`, `make test-long`, `make check`, `make bench`.
# Downloads are cached outside the clone (~/.cache/keel, ~/.m2, pip and Go caches); runtime data in .keel/.

PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
KEEL   := $(BIN)/keel
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | sha256sum | cut -c1-16)
PYTEST_ARGS ?=

.PHONY: install stack stack-down demo test test-secure test-long check bench clean k8s-validate k8s-schemas asyncapi

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@rm -f $(VENV)/.installed-*; touch $(STAMP)

install: $(STAMP)

stack: install
	$(KEEL) stack up --with-toxiproxy

stack-down: install
	$(KEEL) stack down

demo: install
	$(KEEL) stack up --with-toxiproxy
	$(KEEL) demo --report reports/demo.json

# Starts what the tests need and stops it after, unless it was already running before.
test: install
	@bash scripts/with-stack.sh $(BIN)/pytest -m "not long" $(PYTEST_ARGS)

# The same suite against `keel stack up --secure` (SASL_SSL/SCRAM + ACLs, PostgreSQL passwords) in .keel-secure/
# on ports of its own (scripts/with-stack.sh), so a plaintext stack already running is left alone.
test-secure: install
	@bash scripts/with-stack.sh --secure $(BIN)/pytest -m "not long" $(PYTEST_ARGS)

test-long: install
	@bash scripts/with-stack.sh $(BIN)/pytest $(PYTEST_ARGS)

check: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check keel producers consumers projections schemas deploy
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(KEEL) schemas gate
	$(BIN)/hadolint Dockerfile
	$(KEEL) partners asyncapi --check --out docs/asyncapi.yaml
	@bash scripts/k8s-validate.sh
	promtool check rules deploy/observability/prometheus/keel-alerts.yaml
	cd deploy/observability/prometheus && promtool test rules keel-alerts.test.yaml

bench: install
	@bash scripts/with-stack.sh $(KEEL) bench --json reports/bench.json

# deploy/k8s/ against the committed schemas with kubeconform (built once into ~/.cache/keel/bin).
k8s-validate:
	@bash scripts/k8s-validate.sh

# Rebuild deploy/k8s/schemas/ (Kubernetes and CloudNativePG through the Go module proxy; Strimzi's CRDs
# generated from io.strimzi:api with io.strimzi:crd-generator from Maven Central, which needs Java 21+).
k8s-schemas: install
	$(BIN)/python scripts/k8s_schemas.py $(K8S_SCHEMAS_ARGS)

# The partner contract, regenerated from schemas/.
asyncapi: install
	$(KEEL) partners asyncapi --out docs/asyncapi.yaml

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache reports
