# Haven: two commands on a fresh Debian 12 machine, as root.
#   make demo   set up, then start a local cluster and tour the commands
#   make test   set up, then run the whole test suite
SHELL := /bin/bash
APT_PACKAGES := etcd-server etcd-client qemu-system-x86 qemu-utils busybox-static cpio openssl iproute2 procps \
	gcc libc6-dev e2fsprogs kmod iputils-ping iptables ganeti-instance-debootstrap \
	chromium ganeti-htools python3-ganeti-rapi tgt
VENV := .venv
PY := $(VENV)/bin/python
export UV_PYTHON_DOWNLOADS := never
export PATH := $(CURDIR)/$(VENV)/bin:$(HOME)/.local/bin:$(PATH)

.PHONY: setup apt venv guest debootstrap test test-all unit integration e2e lint demo bench clean

setup: apt venv guest debootstrap

apt:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "Installing:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi
	@bash setup/qemu.sh

# The test guest (Debian cloud kernel + busybox initramfs) in /var/cache/haven/guest.
guest: apt
	@bash guest/build-guest.sh

# The Debian guest (-o debootstrap+default): settings in /etc/default/ganeti-instance-debootstrap.
debootstrap: apt
	@bash setup/debootstrap.sh

venv:
	@command -v uv >/dev/null 2>&1 || python3 -m pip install -q --root-user-action=ignore uv
	@uv sync --frozen -q

lint: setup
	uv run ruff check src tests bench
	uv run mypy

# The long variants (-m long) repeat what other tests cover; make test-all adds them.
test: setup lint
	uv run pytest -q -p no:cacheprovider -m "not long" tests

test-all: setup lint
	uv run pytest -q -p no:cacheprovider tests

unit: setup
	uv run pytest -q tests/unit tests/contract -m "not integration"

e2e: setup
	uv run pytest -q tests/e2e

demo: setup
	uv run python -m haven.sim.demo

bench: setup
	uv sync --frozen --group bench
	uv run --group bench python bench/job_latency.py
	uv run --group bench python bench/master_failover.py
	uv run --group bench python bench/instance_lifecycle.py
	uv run --group bench python bench/replication.py
	uv run --group bench python bench/migration_qemu.py
	uv run --group bench python bench/migration_integrity.py
	uv run --group bench python bench/migration.py
	uv run --group bench python bench/outdated.py
	uv run --group bench python bench/debian_guest.py
	uv run --group bench python bench/two_node.py
	uv run --group bench python bench/node_failover.py
	uv run --group bench python bench/api.py
	uv run --group bench python bench/ui_paint.py

clean:
	-$(VENV)/bin/haven down --destroy 2>/dev/null
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
