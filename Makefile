# One interface for people and CI. Everything needs root (namespaces, nftables).
VENV      ?= .venv
PY        := $(VENV)/bin/python
APT_PKGS  := python3-venv nftables conntrack iptables tshark iproute2 openssl chromium
# the third parties of scenarios/interop (SIPp, baresip, Kamailio): installed with no service started
INTEROP_PKGS := sip-tester baresip-core kamailio
PROTOS    := $(wildcard proto/pinhole/rpc/v1/*.proto)
STAMP_APT := $(VENV)/.apt-stamp
STAMP_PIP := $(VENV)/.pip-stamp
GEN       := pinhole/rpc/v1/.generated
# apt waits for the dpkg lock (unattended-upgrades holds it for minutes on a fresh machine) instead of failing
APT       := apt-get -o DPkg::Lock::Timeout=600

.PHONY: setup run test unit proto clean lab-up lab-down lint bench fuzz

setup: $(STAMP_APT) $(STAMP_PIP) $(GEN)

$(STAMP_APT): Makefile
	@missing=""; for p in $(APT_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(APT) update -qq && \
	  echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections && \
	  DEBIAN_FRONTEND=noninteractive $(APT) install -y -qq $$missing >/dev/null; \
	fi
	@missing=""; for p in $(INTEROP_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing the interop recipes' programs:$$missing (no service of theirs is started or enabled)"; \
	  guard=/usr/sbin/policy-rc.d; made=""; \
	  if [ ! -e $$guard ]; then printf '#!/bin/sh\nexit 101\n' > $$guard && chmod +x $$guard && made=1; fi; \
	  $(APT) update -qq && DEBIAN_FRONTEND=noninteractive $(APT) install -y -qq --no-install-recommends $$missing >/dev/null; \
	  status=$$?; [ -n "$$made" ] && rm -f $$guard; \
	  case " $$missing " in *" kamailio "*) [ -d /run/systemd/system ] && systemctl disable --now kamailio 2>/dev/null;; esac; \
	  [ $$status -eq 0 ]; \
	fi
	@test -x $(PY) || python3 -m venv $(VENV)
	@touch $@

$(STAMP_PIP): pyproject.toml $(STAMP_APT)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	@touch $@

$(GEN): $(PROTOS) $(STAMP_PIP)
	$(PY) -m grpc_tools.protoc -Iproto --python_out=. --pyi_out=. --grpc_python_out=. $(PROTOS)
	@touch pinhole/rpc/v1/__init__.py $@

proto: $(GEN)

## run: the RFC 5763 §7.3 flow end to end with RFC timers: ladder, verdict, artifacts in out/last
run: setup
	$(VENV)/bin/pinhole run rfc5763-7.3

## test: every test (unit, interop with openssl, namespace labs end to end, images and container labs)
test: setup image-tools
	$(PY) -m pytest -q

unit: setup
	$(PY) -m pytest -q -m "not lab and not containers"

lab-up: setup
	$(VENV)/bin/pinhole lab up

lab-down: setup
	$(VENV)/bin/pinhole lab down

## clean: remove stragglers (the namespaces and processes pinhole recorded making, never another tool's), outputs
clean:
	-@test -x $(PY) && $(PY) -c "from netns.lab import NetnsLab; print('removed:', NetnsLab.cleanup_stragglers())"
	-@test -x $(PY) && $(PY) -c "from containers.lab import ContainerLab; print('removed:', ContainerLab.cleanup_stragglers())"
	rm -rf out .pytest_cache

## lint: ruff over the library, services, lab and tests; mypy over the library, services and lab backends
lint: setup
	$(PY) -m pip install -q -e '.[lint]'
	$(VENV)/bin/ruff check pinhole services netns containers bench tests fuzz
	$(VENV)/bin/mypy

## fuzz: every parser, FUZZ_INPUTS inputs or FUZZ_SECONDS s each (atheris if it installs); crashes in fuzz/crashes
FUZZ_INPUTS  ?= 1000000
FUZZ_SECONDS ?= 600
FUZZ_SEED    ?= 0
FUZZ_ENGINE  ?= auto
fuzz: setup
	@$(PY) -m pip install -q atheris || echo "atheris does not install here: the deterministic mutator runs instead"
	$(PY) -m fuzz --target all --inputs $(FUZZ_INPUTS) --max-seconds $(FUZZ_SECONDS) --seed $(FUZZ_SEED) --engine $(FUZZ_ENGINE)

## bench: speed targets against a named peer measured in the same run (root; about an hour, the 10,000 calls
## of bench/memory.py most of it)
bench: setup images
	$(PY) bench/lab_build.py
	$(PY) bench/backends.py
	$(PY) bench/sip_parsing.py
	$(PY) bench/sip_proxies.py
	$(PY) bench/tracing_cost.py
	$(PY) bench/capacity.py
	$(PY) bench/memory.py

## images: one Podman image per service (localhost/pinhole-<service>), built offline (root; podman, debootstrap)
IMAGE_APT_PKGS := podman buildah runc iptables debootstrap
.PHONY: images base-image image-tools
image-tools:
	@missing=""; for p in $(IMAGE_APT_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then echo "installing Debian packages:$$missing"; $(APT) update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(APT) install -y -qq $$missing >/dev/null; fi

base-image: setup image-tools
	containers/images.sh base-image

images: setup image-tools
	containers/images.sh images
	containers/images.sh smoke

## kube-play: the rendered k8s/ manifests as pods of the local images (podman kube play), the §7.3 Job's verdict
.PHONY: kube-play
kube-play: images
	$(PY) -m containers.kube_play --overlay k8s/overlays/ci
