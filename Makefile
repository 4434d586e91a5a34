# ssi-boot: `make help` lists the targets. `make demo` and `make test` install what they need.
SHELL := /bin/bash
VENV  ?= .venv
PY    := $(VENV)/bin/python
CACHE ?= $(CURDIR)/.cache
export SSI_CACHE := $(CACHE)

# Debian packages the tools and the tests use (real servers, QEMU, filesystems).
APT_PACKAGES := python3-venv python3-dev gcc qemu-system-x86 qemu-utils ipxe-qemu \
	isc-dhcp-server kea-dhcp4-server dnsmasq-base tftpd-hpa tftp-hpa busybox-static \
	isc-dhcp-client cpio zstd dosfstools mtools e2fsprogs xfsprogs extlinux syslinux syslinux-common \
	pxelinux openssh-server openssh-client iproute2 fdisk kmod binutils udev nfs-ganesha nfs-ganesha-vfs \
	nginx-light curl shim-signed grub-efi-amd64-signed ovmf \
	debootstrap debian-archive-keyring
# debootstrap builds the real Debian shared root of vm_tests/test_real_root.py
# (vm_tests/debianroot.py) and the benchmarks' chroot holding the anchors (dracut,
# initramfs-tools: bench/anchors.py), so nothing of those lands on the host; it checks
# the suite's signature with the keyring, a Recommends of it.
# Only the benchmarks' (none left beyond APT_PACKAGES today).
BENCH_APT_PACKAGES :=

# $(call apt_install,PACKAGES) in a stamp's recipe: apt-get install those of PACKAGES not
# installed yet (root), then touch the stamp.
define apt_install
	@mkdir -p $(CACHE)
	@missing=$$(for p in $(1); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing:" $$missing; \
		if [ "$$(id -u)" != 0 ]; then echo "need root to apt-get install:" $$missing >&2; exit 1; fi; \
		export DEBIAN_FRONTEND=noninteractive; \
		apt-get update -q && apt-get install -y -q --no-install-recommends $$missing; \
	fi
	@touch $@
endef

.PHONY: help deps bench-deps venv kernel lint test unit integration vm demo bench powercut clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

deps: $(CACHE)/apt.stamp ## install the Debian packages (root; skipped when all are present)
$(CACHE)/apt.stamp: Makefile
	$(call apt_install,$(APT_PACKAGES))

bench-deps: $(CACHE)/apt-bench.stamp ## the benchmarks' extra Debian packages (root; skipped when present)
$(CACHE)/apt-bench.stamp: Makefile
	$(call apt_install,$(BENCH_APT_PACKAGES))

venv: $(VENV)/.stamp ## the virtualenv with ssi-boot and its dev tools
$(VENV)/.stamp: pyproject.toml $(CACHE)/apt.stamp
	test -x $(PY) || /usr/bin/python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@touch $@

kernel: venv ## fetch (once) the Debian kernel the VM tests boot
	$(PY) -m vm_tests.kernel

lint: venv ## ruff and mypy --strict
	$(VENV)/bin/ruff check linuxrc_agent mkinitrd_ssi tests vm_tests bench
	$(VENV)/bin/mypy

test: deps venv kernel lint ## every tier; a skip is a failure (SSI_REQUIRE_ALL=1)
	SSI_REQUIRE_ALL=$${SSI_REQUIRE_ALL:-1} $(VENV)/bin/pytest -q

unit: venv ## unit tests only (no root)
	$(VENV)/bin/pytest -q tests/unit

integration: deps venv ## root: network namespaces and real DHCP servers
	$(VENV)/bin/pytest -q tests/integration

vm: deps venv kernel ## QEMU boots of the real kernel with our ramdisk
	$(VENV)/bin/pytest -q vm_tests

demo: deps venv kernel ## build the ramdisk and boot a small demo cluster under QEMU
	$(PY) -m vm_tests.demo

bench: deps bench-deps venv kernel ## benchmarks; figures go in the README
	$(PY) bench/bench_mkdhcpd.py
	$(PY) bench/bench_disk_sync.py
	$(PY) bench/bench_fanout.py
	$(PY) bench/bench_initrd.py
	$(PY) bench/bench_pxe.py
	$(PY) bench/bench_ssitab_1m.py
	$(PY) bench/bench_storm.py

powercut: deps venv kernel ## root: every crash state of a sync (ext4, vfat, ESP), then 200 power cuts mid-sync under QEMU (CUTS=N, SEED=S)
	$(PY) bench/bench_powercut.py --cuts $${CUTS:-200} $${SEED:+--seed $$SEED}

clean: ## remove the virtualenv and caches (kernel included)
	rm -rf $(VENV) $(CACHE) *.egg-info
