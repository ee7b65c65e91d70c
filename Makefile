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
.PHONY: help setup setup-image render image smoke container test unit lint bench docs promote rollback releases pristine clean

# The `##` comment on a target's line is its one description: `make help` prints
# it, and docs/reference/commands.md is generated from it (builder/cli/reference.py).
help: ## list the targets (docs/reference/commands.md has them as a table)
	@grep -E '^[a-z]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'
	@echo "  SPEC=… picks another spec (default $(SPEC)); TAG=… an image"

setup: ## install host packages, mkosi 25.3 (trixie's .deb unpacked into the cache; apt sources untouched), uv and the venv; idempotent
	@scripts/setup-host.sh
	@$(UV) sync --frozen --quiet

# What rendering and building need: the host packages marked "image" in
# scripts/setup-host.sh (no QEMU, browser or nginx: they come with the test targets).
setup-image:
	@scripts/setup-host.sh image
	@$(UV) sync --frozen --quiet

render: setup-image ## render units and configs from SPEC into build/render/, to read before building
	$(CLI) render --spec $(SPEC)

image: setup-image ## build the image for SPEC into images/<tag>/ (its tag goes to build/last-tag)
	$(CLI) build --spec $(SPEC) --progress --tag-file $(LAST_TAG)

unit: setup ## fast tests, no VM: spec, render, CLI, docs, the on-host programs against a real sshd and rsync
	$(RUN) pytest tests/unit -q

lint: setup ## ruff over the Python code
	$(RUN) ruff check builder tests bench

container: setup ## check the image `make image` built last (or TAG=…) in seconds, no boot: its unit files, configs and on-host programs in its own root under systemd-nspawn
	$(if $(TAG),AURORA_IMAGE=$(TAG)) $(RUN) pytest tests/container -v

smoke: setup ## boot the image `make image` built last (or TAG=…) under QEMU, run the smoke suite; it writes the attestation
	$(if $(TAG),AURORA_IMAGE=$(TAG)) $(RUN) pytest tests/vm -v

# Both suites test the image this run built (its tag, read once from
# $(LAST_TAG)), never the newest in the store (tests/image_choice.py). The release
# suite runs after the smoke suite has attested it (the attestation is written
# when that pytest session ends) and refuses an attestation older than this run.
test: setup image ## everything, on the image this run built: lint, unit tests, the container tier, the smoke suite, then the release suite (a real Glance, a Nova double)
	$(RUN) ruff check builder tests bench
	@tag=$$(cat $(LAST_TAG)) && since=$$(date +%s) && echo "make test: testing image $$tag" && \
	AURORA_IMAGE=$$tag $(RUN) pytest tests/unit tests/container tests/vm -v && \
	AURORA_IMAGE=$$tag AURORA_ATTESTED_SINCE=$$since $(RUN) pytest tests/release -v

pristine: ## what CI runs: `make image` then `make test` in a fresh Debian 12 root (mmdebstrap; only build caches carried in; about 30 min warm on 2 cores)
	scripts/pristine-check.sh

docs: setup ## regenerate the spec, command and carried-files references and the spec's JSON Schema, build the MkDocs site into build/site/
	$(RUN) python -m builder.spec.reference
	$(CLI) schema --out docs/reference/spec.schema.json
	$(RUN) python -m builder.cli.reference
	$(RUN) python -m builder.render.carried_reference
	$(RUN) mkdocs build --strict --site-dir build/site

promote: setup ## upload attested image TAG=… to Glance, rebuild the JASMIN server from it, probe it (rolls back by itself on failure)
	@test -n "$(TAG)" || { echo "make promote: give the image, e.g. make promote TAG=2026.11-3f9c2a1b7e4d (see make releases)" >&2; exit 2; }
	$(CLI) promote --spec $(SPEC) $(TAG)

rollback: setup ## rebuild the server from TAG=… (default: the image live before the current one)
	$(CLI) rollback --spec $(SPEC) $(TAG)

releases: setup ## images in Glance and here, which one is live, who promoted what when
	$(CLI) releases --spec $(SPEC)

bench: setup ## print render, build, rebuild, boot and smoke-suite figures
	$(RUN) python -u bench/run.py --spec $(SPEC)

clean: ## remove build/ and images/ (the caches in AURORA_CACHE stay)
	rm -rf build images
