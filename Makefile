# Two commands on a fresh Debian machine with only Python: `make demo` and `make test`.
# Each installs what it needs: Debian's packages (via apt, when missing), a .venv, the package.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
SUM    := $(shell cat pyproject.toml | cksum | cut -d' ' -f1)
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo test lint format bench bench-scale bench-console setup setup-base system-base system-packages clean

# the demo needs only qemu-utils and the package; the tests also libvirt, QEMU and PostgreSQL
demo: setup-base
	$(BIN)/goldfleet demo

test: setup
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/lint-imports
	@# three workers on two cores: most e2e tests wait on servers, sleeps and qemu-img;
	@# a module that starts one costly server for all its tests is kept on one worker
	@# (pytest.mark.xdist_group). Alone, a file runs as usual: pytest tests/e2e/test_x.py
	$(BIN)/pytest -n 3 --dist loadgroup

lint: setup
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/lint-imports

format: setup
	$(BIN)/ruff format src tests bench
	$(BIN)/ruff check --fix src tests bench

bench: setup
	$(BIN)/python bench/clones.py

# the 10,000-clone fleet on the sim driver, every figure of issue 10 next to its limit (minutes)
bench-scale: setup
	$(BIN)/python bench/scale.py

# the web console with 10,000 clones and 200 templates: page times, first paint, SSE lag (minutes)
bench-console: setup
	$(BIN)/python bench/console.py

setup-base: system-base $(VENV)/.installed-base-$(SUM)

setup: system-packages $(VENV)/.installed-dev-$(SUM)

system-base:
	@if ! command -v qemu-img >/dev/null || ! command -v qemu-io >/dev/null \
	    || ! command -v prlimit >/dev/null; then \
	  echo "installing Debian packages: qemu-utils util-linux"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq qemu-utils util-linux >/dev/null; \
	fi

system-packages: system-base
	@if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then \
	  echo "installing Debian package: postgresql"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq postgresql >/dev/null; \
	fi
	@# host updates (docs/hosts.md): gpg and gpgv verify a channel's InRelease; the tests build
	@# their apt repository with dpkg-deb and install into host roots with dpkg --root
	@if ! command -v gpg >/dev/null || ! command -v gpgv >/dev/null \
	    || ! command -v gpgconf >/dev/null || ! command -v dpkg-deb >/dev/null; then \
	  echo "installing Debian packages: gnupg gpgv dpkg"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends \
	    gnupg gpgv dpkg >/dev/null; \
	fi
	@# the web console's browser tests (tests/e2e/test_e2e_console.py): Debian's chromium, driven
	@# by Playwright through its executable (no browser download)
	@if ! command -v chromium >/dev/null; then \
	  echo "installing Debian package: chromium"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends \
	    chromium >/dev/null; \
	fi
	@# the ssh host agent's test (tests/e2e/test_e2e_ssh_agent.py) starts its own sshd on loopback
	@if ! command -v ssh >/dev/null || ! command -v ssh-keygen >/dev/null \
	    || ! test -x /usr/sbin/sshd; then \
	  echo "installing Debian packages: openssh-server openssh-client"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends \
	    openssh-server openssh-client >/dev/null; \
	fi
	@if ! command -v curl >/dev/null; then \
	  echo "installing Debian package: curl"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq curl >/dev/null; \
	fi
	@# libvirt: libvirt-python builds against libvirt-dev (pkg-config, a C compiler, Python's
	@# headers); the real-boot test runs QEMU under embedded libvirt and builds its guest with busybox
	@if ! dpkg -s libvirt-dev >/dev/null 2>&1 || ! command -v pkg-config >/dev/null \
	    || ! command -v cc >/dev/null \
	    || ! command -v qemu-system-x86_64 >/dev/null \
	    || ! dpkg -s libvirt-daemon-driver-qemu >/dev/null 2>&1 \
	    || ! dpkg -s busybox-static >/dev/null 2>&1; then \
	  echo "installing Debian packages: libvirt-dev pkg-config gcc qemu-system-x86 libvirt-daemon-driver-qemu busybox-static"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends \
	    libvirt-dev pkg-config gcc qemu-system-x86 libvirt-daemon-driver-qemu busybox-static >/dev/null; \
	fi
	@if ! $(PYTHON) -c 'import os, sys, sysconfig; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))'; then \
	  echo "installing Debian package: python3-dev (Python's headers, to build libvirt-python)"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends python3-dev >/dev/null; \
	fi
	@# Debian's QEMU driver refuses to start, even embedded, unless its QEMU user exists (the
	@# libvirt-daemon-system package would add it, with daemons, polkit and a firewall besides)
	@if ! getent passwd libvirt-qemu >/dev/null; then \
	  echo "adding the system user libvirt-qemu"; \
	  $(SUDO) useradd --system --user-group --no-create-home --home-dir /var/lib/libvirt \
	    --shell /usr/sbin/nologin libvirt-qemu; \
	fi
	@# the nwfilter test hands goldfleet's quarantine filters to a private libvirtd (its nwfilter
	@# driver is in libvirt-daemon; iptables and ebtables are its firewall tools)
	@if ! command -v libvirtd >/dev/null && ! test -x /usr/sbin/libvirtd \
	    || ! dpkg -s iptables ebtables >/dev/null 2>&1; then \
	  echo "installing Debian packages: libvirt-daemon iptables ebtables"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends \
	    libvirt-daemon iptables ebtables >/dev/null; \
	fi
	@# the real-boot test fetches its guest's kernel and agent with apt-get download
	@if ! apt-cache show linux-image-cloud-amd64 qemu-guest-agent >/dev/null 2>&1; then \
	  echo "updating apt's package lists"; \
	  $(SUDO) apt-get update -qq; \
	fi

$(VENV)/.installed-base-$(SUM): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e .
	rm -f $(VENV)/.installed-base-*
	touch $@

# dev: the test tools and libvirt-python (built against libvirt-dev)
$(VENV)/.installed-dev-$(SUM): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	rm -f $(VENV)/.installed-dev-* $(VENV)/.installed-base-*
	touch $@ $(VENV)/.installed-base-$(SUM)

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache .ruff_cache
