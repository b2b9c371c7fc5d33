# Two commands do everything on a fresh machine (see README.md):
#   make demo   — set up, build the guest, boot it and show its console
#   make test   — set up, build the guest, run the whole test suite
VENV    ?= .venv
PY      := $(VENV)/bin/python
PLUGINS := $(wildcard plugins/*/pyproject.toml)

.PHONY: demo vmm-demo test test-unit test-kvm test-linux setup sysdeps guest bench fuzz proto cffi clean

# The main job: a node service booting the default guest through the Python client.
demo: setup guest
	scripts/demo $(PY)

# The VMM alone, without the node service.
vmm-demo: setup guest
	$(PY) -m nodesvc.vmm.cli --kernel guest/out/vmlinux --initrd guest/out/initramfs.cpio \
	    --vcpus 2 --mem-mib 256

test: setup guest
	scripts/run-tests $(PY)

test-unit: setup
	scripts/run-tests $(PY) -m "not kvm and not linux"

test-kvm: setup
	scripts/run-tests $(PY) -m "kvm and not linux"

test-linux: setup guest
	scripts/run-tests $(PY) -m linux

NODE_DEPS := clients/node/node_modules/.package-lock.json

setup: sysdeps $(VENV)/.installed $(NODE_DEPS)

# Debian packages the suite needs (gcc for tiny guests and the ABI check).
sysdeps:
	@scripts/install-sysdeps

# The client is installed in the same pip call as `-e .` so its `nodesvc` requirement is
# met by this checkout, never looked up on PyPI.
$(VENV)/.installed: pyproject.toml clients/python/pyproject.toml jailer/pyproject.toml $(PLUGINS)
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,fuzz]' -e ./clients/python -e ./jailer $(foreach p,$(dir $(PLUGINS)),-e ./$(p))
	touch $@

# The Node.js client's packages (tests/clients/test_node_client.py): set-up reaches the
# registry, tests never do.
$(NODE_DEPS): clients/node/package-lock.json
	cd clients/node && npm ci --no-audit --no-fund

guest:
	bash guest/build.sh

# Regenerate the checked-in gRPC code from proto/ (a test fails when it is stale).
proto: setup
	scripts/gen-proto

# Regenerate the pre-parsed cffi declarations (a test fails when they are stale).
cffi: setup
	$(PY) -m nodesvc.vmm.cffi_cache

bench: setup guest
	$(PY) bench/boot.py --peer qemu
	$(PY) bench/ratelimit.py
	$(PY) bench/virtio_blk.py
	$(PY) bench/virtio_net.py
	$(PY) bench/mmds.py
	$(PY) bench/vsock.py
	$(PY) bench/lifecycle.py
	$(PY) bench/node.py

# Every atheris fuzz target for FUZZ_RUNS inputs each (docs/fuzzing.md); crashing inputs
# land in fuzz/artifacts/, corpora in fuzz/corpus/.
FUZZ_RUNS ?= 100000
FUZZ_JOBS ?= 1
fuzz: setup
	$(PY) -m fuzz --runs $(FUZZ_RUNS) --jobs $(FUZZ_JOBS) --corpus fuzz/corpus

clean:
	rm -rf $(VENV) tests/guests/out
