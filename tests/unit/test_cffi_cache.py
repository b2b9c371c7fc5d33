"""The checked-in pre-parsed cffi modules match their declarations (else: `make cffi`)."""

import importlib

import cffi
import pytest

from nodesvc.vmm import cffi_cache


@pytest.mark.parametrize("module", cffi_cache.MODULES)
def test_generated_module_is_current_and_used(module):
    mod = importlib.import_module(module)
    gen = importlib.import_module(cffi_cache.generated_name(module))
    assert gen.DIGEST == cffi_cache.digest(mod.__file__), "stale: run `make cffi`"
    ffi = getattr(mod, "ffi", None) or mod._ffi
    assert ffi is gen.ffi and not isinstance(ffi, cffi.FFI)


@pytest.mark.parametrize("module", cffi_cache.MODULES)
def test_pre_parsed_layouts_equal_parsed_ones(module):
    mod = importlib.import_module(module)
    parsed = cffi.FFI()
    mod._declare(parsed)
    fast = getattr(mod, "ffi", None) or mod._ffi
    for name in parsed.list_types()[1]:  # struct/union names
        ctype = f"struct {name}"
        assert fast.sizeof(ctype) == parsed.sizeof(ctype), ctype
        assert [(n, f.offset) for n, f in fast.typeof(ctype).fields] == \
            [(n, f.offset) for n, f in parsed.typeof(ctype).fields], ctype
