# The operator's entry points. `make image` then `make test` on a fresh
# Debian 12 machine (as root) is all it takes; `make help` lists the rest.
SHELL := /bin/bash
SPEC ?= hosts/aurora.yml
AURORA_CACHE ?= /var/cache/aurora-image
export AURORA_CACHE
export UV_CACHE_DIR := $(AURORA_CACHE)/uv
export UV_PYTHON_DOWNLOADS := never
export UV_PYTHON := /usr/bin/python3
UV := $(AURORA_CACHE)/uvboot/bin/uv
RUN := $(UV) run --frozen --no-sync
CLI := $(RUN) aurora-image
# The tag `make image` built last: what `make test` and `make smoke` test.
LAST_TAG ?= build/last-tag

.DEFAULT_GOAL := help
.PHONY: help setup render image smoke test unit lint bench docs promote rollback releases pristine clean

help: ## list the targets
	@grep -E '^[a-z]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

setup: ## install host packages, mkosi, uv and the Python venv (idempotent)
	@scripts/setup-host.sh
	@$(UV) sync --frozen --quiet

render: setup ## render units and configs from $(SPEC) into build/render
	$(CLI) render --spec $(SPEC)

image: setup ## build the image for $(SPEC) into images/<tag>/ (its tag goes to build/last-tag)
	$(CLI) build --spec $(SPEC) --progress --tag-file $(LAST_TAG)

unit: setup ## fast tests: spec, render, programs against real sshd/rsync
	$(RUN) pytest tests/unit -q

lint: setup ## ruff over the Python code
	$(RUN) ruff check builder tests bench

smoke: setup ## boot the image `make image` built last (or TAG=…) under QEMU and run the testinfra suite
	$(if $(TAG),AURORA_IMAGE=$(TAG)) $(RUN) pytest tests/vm -v

# Both suites test the image this run built (its tag, read once from
# $(LAST_TAG)), never the newest in the store (tests/image_choice.py). The release
# suite runs after the smoke suite has attested it (the attestation is written
# when that pytest session ends) and refuses an attestation older than this run.
test: image ## everything: lint, unit tests, the QEMU smoke suite, then the release suite
	$(RUN) ruff check builder tests bench
	@tag=$$(cat $(LAST_TAG)) && since=$$(date +%s) && echo "make test: testing image $$tag" && \
	AURORA_IMAGE=$$tag $(RUN) pytest tests/unit tests/vm -v && \
	AURORA_IMAGE=$$tag AURORA_ATTESTED_SINCE=$$since $(RUN) pytest tests/release -v

pristine: ## what CI runs: `make image` then `make test` in a fresh Debian 12 root (mmdebstrap)
	scripts/pristine-check.sh

docs: setup ## regenerate the spec reference and build the MkDocs site into build/site
	$(RUN) python -m builder.spec.reference
	$(CLI) schema --out docs/reference/spec.schema.json
	$(RUN) python -m builder.cli.reference
	$(RUN) mkdocs build --strict --site-dir build/site

promote: setup ## upload image TAG=… to Glance, rebuild the JASMIN server from it, probe it
	@test -n "$(TAG)" || { echo "make promote: give the image, e.g. make promote TAG=2026.11-3f9c2a1b7e4d (see make releases)" >&2; exit 2; }
	$(CLI) promote --spec $(SPEC) $(TAG)

rollback: setup ## rebuild the server from TAG=… (default: the image live before the current one)
	$(CLI) rollback --spec $(SPEC) $(TAG)

releases: setup ## images in Glance and here, which one is live, who promoted what when
	$(CLI) releases --spec $(SPEC)

bench: setup ## print render, build, boot and smoke-suite figures
	$(RUN) python -u bench/run.py --spec $(SPEC)

clean: ## remove build/ and images/ (the caches in $(AURORA_CACHE) stay)
	rm -rf build images
