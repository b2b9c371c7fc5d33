"""Fast start-up for our cffi declarations: checked-in "out-of-line ABI mode" modules.

Parsing C declarations with pycparser costs ~100 ms per process — a large share of a
VMM's start. cffi can instead emit a Python module holding the already-parsed types
(no compiler involved). Each declaring module (e.g. `nodesvc/vmm/kvm/abi.py`) keeps its
C source in a `_declare(ffi)` function and calls `load()`; the generated sibling module
(`_abi_ffi.py`) records a digest of the declaring file, and is used only while that
digest matches — edit the declarations and you get the (slow, correct) parsed FFI until
`make cffi` regenerates it; a test fails meanwhile.

    python -m nodesvc.vmm.cffi_cache        # regenerate every module below
"""

from __future__ import annotations

import hashlib
import importlib
import sys
from pathlib import Path
from typing import Callable

import cffi

#: Declaring modules, in the order `make cffi` regenerates them.
MODULES = ("nodesvc.vmm.kvm.abi", "nodesvc.vmm.boot.abi", "nodesvc.vmm.timerfd")


def generated_name(module: str) -> str:
    pkg, _, leaf = module.rpartition(".")
    return f"{pkg}._{leaf}_ffi"


def digest(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def load(module: str, path: str, declare: Callable[[cffi.FFI], None]):
    """The FFI for a declaring module: pre-parsed when current, else parsed now."""
    try:
        gen = importlib.import_module(generated_name(module))
        if getattr(gen, "DIGEST", None) == digest(path):
            return gen.ffi
    except ImportError:
        pass
    ffi = cffi.FFI()
    declare(ffi)
    return ffi


def regenerate(module: str) -> Path:
    mod = importlib.import_module(module)
    builder = cffi.FFI()
    mod._declare(builder)
    name = generated_name(module)
    out = Path(mod.__file__).with_name(name.rpartition(".")[2] + ".py")
    builder.set_source(name, None)
    builder.emit_python_code(str(out))
    with open(out, "a") as f:
        f.write(f'\n# digest of {Path(mod.__file__).name}; see nodesvc/vmm/cffi_cache.py\n'
                f'DIGEST = "{digest(mod.__file__)}"\n')
    return out


def main() -> int:
    for module in MODULES:
        print(f"cffi: {regenerate(module)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
