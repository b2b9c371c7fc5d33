"""The atheris side of a target: instrument the code under test, then hand libFuzzer the
one-input function. Importing this needs only atheris (no device code), so the device
modules a target imports inside `instrumented()` are the ones that get coverage."""

from __future__ import annotations

import logging
import sys

try:
    import atheris
except ImportError:          # the set-up installs it: `make setup` (the `fuzz` extra)
    sys.exit("atheris is not installed: run `make setup` "
             "(or .venv/bin/pip install -e '.[fuzz]')")

#: top-level packages whose bytecode gets libFuzzer's coverage counters
INSTRUMENTED = ("nodesvc", "nodesvc_virtio_blk", "nodesvc_virtio_net", "nodesvc_vsock",
                "nodesvc_virtio_rng", "nodesvc_serial", "nodesvc_i8042")


# Device failures are logged (rate-limited) in the VMM; here they are the expected
# outcome of most inputs, and the log would only slow the run down.
logging.disable(logging.CRITICAL)


def instrumented():
    return atheris.instrument_imports(include=list(INSTRUMENTED))


def main(test_one_input, argv=None) -> None:
    """Run libFuzzer on `test_one_input(data: bytes)`; argv as libFuzzer takes it."""
    argv = list(sys.argv if argv is None else argv)
    atheris.Setup(argv, test_one_input)
    atheris.Fuzz()
