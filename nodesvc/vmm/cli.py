"""`nodesvc-vmm`: run one microVM from a Firecracker config file or a few quick flags.

    nodesvc-vmm --config-file vm.json
    nodesvc-vmm --kernel vmlinux --initrd initrd.cpio --boot-args "console=ttyS0" --vcpus 2
    nodesvc-vmm --config-file vm.json --metadata meta.json     # MMDS's first document

The configuration is fully validated before the VM module is even imported, so a bad
config exits with status 2 and leaves no KVM state behind. When stdin is a terminal the
console runs in raw mode: keys (Ctrl-C included) go to the guest; Ctrl-A x stops the VM,
Ctrl-A Ctrl-A sends a literal Ctrl-A. Otherwise the exit status comes from the exit
reason (nodesvc.vmm.exits): 0 for a clean guest exit, 3-6 for failures, 1 for VMM errors.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import re
import select
import signal
import sys
import termios
import tty
from typing import Iterator, Sequence

from nodesvc.plugins.registry import RegistryError

from .errors import ConfigError, VmmError

PROG = "nodesvc-vmm"
QUICK_FLAGS = ("kernel", "initrd", "boot_args", "vcpus", "mem_mib")
# Firecracker's instance id rule; the id ends up in paths (jail, logs), so keep it tame.
_VM_ID = re.compile(r"[A-Za-z0-9-]{1,64}")
_TRACE = 5
_LEVELS = {"off": logging.CRITICAL + 10, "error": logging.ERROR, "warning": logging.WARNING,
           "info": logging.INFO, "debug": logging.DEBUG, "trace": _TRACE}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="Run one KVM microVM.")
    p.add_argument("--config-file", metavar="FILE",
                   help="Firecracker-format JSON config (not combinable with quick flags)")
    q = p.add_argument_group("quick flags (instead of --config-file)")
    q.add_argument("--kernel", metavar="PATH", help="guest kernel (ELF vmlinux or bzImage)")
    q.add_argument("--initrd", metavar="PATH", help="initial ramdisk")
    q.add_argument("--boot-args", metavar="ARGS", help="guest kernel command line")
    q.add_argument("--vcpus", type=int, metavar="N", help="number of vCPUs (default 1)")
    q.add_argument("--mem-mib", type=int, metavar="MIB", help="guest memory in MiB (default 128)")
    p.add_argument("--metadata", metavar="FILE",
                   help="JSON document for the metadata service (MMDS), in the store before "
                        "the guest boots (Firecracker's --metadata)")
    p.add_argument("--id", default="vm0", help="VM id (letters, digits, '-'; default vm0)")
    p.add_argument("--no-console-input", action="store_true",
                   help="don't forward stdin to the guest console")
    p.add_argument("--log-level", type=str.lower, choices=list(_LEVELS), default="warning",
                   help="VMM log level (default warning)")
    p.add_argument("--list-plugins", action="store_true",
                   help="print the loaded plugins (name, distribution, version) and exit")
    return p


def _error(msg: str) -> None:
    print(f"{PROG}: error: {msg}", file=sys.stderr)


def _setup_logging(level: str) -> None:
    logging.addLevelName(_TRACE, "TRACE")
    logging.basicConfig(stream=sys.stderr,   # no-op if the embedder set up logging
                        format=f"{PROG}: %(levelname)s %(name)s: %(message)s")
    logging.getLogger("nodesvc").setLevel(_LEVELS[level])


def list_plugins() -> int:
    from nodesvc.plugins import PluginManager
    try:
        plugins = PluginManager().plugins()
    except Exception as e:  # a broken third-party plugin can raise anything on import
        _error(f"loading plugins failed: {e}")
        return 1
    for info in plugins:
        print(f"{info.name}\t{info.distribution}\t{info.version}")
    return 0


def load_config(args: argparse.Namespace):
    """The VmConfig from --config-file or the quick flags; raises ConfigError."""
    from . import config
    used = [f"--{n.replace('_', '-')}" for n in QUICK_FLAGS if getattr(args, n) is not None]
    if args.config_file is not None:
        if used:
            raise ConfigError(f"--config-file cannot be combined with {', '.join(used)}")
        return config.load_config_file(args.config_file)
    if args.kernel is None:
        raise ConfigError("either --config-file or --kernel is required")
    return config.config_from_flags(args.kernel, args.initrd, args.boot_args,
                                    args.vcpus, args.mem_mib)


def load_metadata(path: str | None):
    """The --metadata document, checked as the VM's store will take it; raises ConfigError."""
    if path is None:
        return None
    from nodesvc.mmds.store import MmdsError, MmdsStore
    try:
        with open(path, "rb") as f:
            text = f.read()
    except OSError as e:
        raise ConfigError(f"--metadata: cannot read {path!r}: {e.strerror or e}") from None
    store = MmdsStore()
    try:
        store.put(text)
    except (MmdsError, UnicodeDecodeError) as e:
        raise ConfigError(f"--metadata: {path}: {e}") from None
    return store.document


def console_input_fd(fd: int = 0) -> int | None:
    """`fd` if the event loop can watch it. epoll refuses regular files and /dev/null
    (EPERM), so `nodesvc-vmm ... </dev/null` simply runs without console input."""
    try:
        with select.epoll() as ep:
            ep.register(fd, select.EPOLLIN)
    except OSError:     # EPERM: not pollable; EBADF: stdin is closed
        logging.getLogger("nodesvc.vmm").info("stdin is not pollable: no console input")
        return None
    return fd


@contextlib.contextmanager
def raw_terminal(fd: int) -> Iterator[bool]:
    """Put a terminal in raw mode for the block and always restore it; yields whether it did."""
    try:
        saved = termios.tcgetattr(fd)
    except (termios.error, OSError):    # not a terminal: nothing to do
        yield False
        return
    try:
        tty.setraw(fd, termios.TCSANOW)
        yield True
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


@contextlib.contextmanager
def _stop_on_signals(vm) -> Iterator[None]:
    """SIGINT/SIGTERM ask the VM to stop; previous handlers are restored afterwards."""
    def handler(signum, frame):
        vm.stop(f"received {signal.Signals(signum).name}")
    saved = {}
    try:
        for s in (signal.SIGINT, signal.SIGTERM):
            saved[s] = signal.signal(s, handler)
    except ValueError:          # not the main thread (embedded use): caller handles signals
        pass
    try:
        yield
    finally:
        for s, h in saved.items():
            signal.signal(s, h)


def run_vm(cfg, args: argparse.Namespace, metadata=None) -> int:
    # Imported only now: the config is valid, so creating KVM state is allowed.
    from .console import StdoutSink
    from .vm import MicroVm

    stdin_fd = None if args.no_console_input else console_input_fd(0)
    sys.stdout.flush()          # the sink writes fd 1 directly, bypassing sys.stdout
    sink = StdoutSink(1)
    try:
        raw = raw_terminal(stdin_fd) if stdin_fd is not None and os.isatty(stdin_fd) \
            else contextlib.nullcontext(False)
        with raw as is_raw:
            # In raw mode Ctrl-C reaches the guest, so the VMM needs the Ctrl-A x escape.
            vm = MicroVm(cfg, vm_id=args.id, console_out=sink, console_in_fd=stdin_fd,
                         console_escape=is_raw)
            if metadata is not None:    # before the vCPUs exist, so before the guest boots
                vm.mmds.mmds.put(metadata)
            with _stop_on_signals(vm):
                result = vm.run()
    finally:
        sink.close()
    # Printed after the terminal is restored, so the line ends where it should.
    print(f"{PROG}: {args.id} exited: {result}", file=sys.stderr)
    return result.reason.exit_code


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:     # argparse: usage errors exit 2, --help exits 0
        return e.code if isinstance(e.code, int) else 2
    _setup_logging(args.log_level)
    if args.list_plugins:
        return list_plugins()
    try:
        if not _VM_ID.fullmatch(args.id):
            raise ConfigError(f"--id: must be 1-64 letters, digits or '-', got {args.id!r}")
        cfg = load_config(args)
        metadata = load_metadata(args.metadata)
    except ConfigError as e:
        _error(str(e))
        return 2
    try:
        return run_vm(cfg, args, metadata)
    except ConfigError as e:    # e.g. a device plugin refusing its section
        _error(str(e))
        return 2
    except (VmmError, RegistryError, OSError) as e:  # KVM, missing plugin, /dev/kvm access
        _error(str(e))
        return 1


if __name__ == "__main__":
    sys.exit(main())
