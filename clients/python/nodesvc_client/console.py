"""`nodectl console`: an interactive AttachConsole session on the caller's terminal.

The terminal is put in raw mode so every key (Ctrl-C included) goes to the guest; output
post-processing stays on so the guest's bare "\\n" still starts a new line. The escape key
(Ctrl-] by default, as in telnet and `virsh console`) detaches: the session ends, the VM
keeps running. End of input (stdin not a terminal) detaches too. The terminal is restored
however the session ends (detach, VM stopped, error, SIGTERM/SIGHUP).
"""

from __future__ import annotations

import os
import queue
import select
import signal
import sys
import termios
import threading
import tty
from contextlib import contextmanager

from .errors import NodeError, SpecError

DEFAULT_ESCAPE = "^]"


def parse_escape(text: str) -> int:
    """Caret notation ('^]', '^A', '^\\\\') or one character -> the byte it sends."""
    if len(text) == 2 and text[0] == "^" and 0x3F <= ord(text[1].upper()) <= 0x5F:
        return 0x7F if text[1] == "?" else ord(text[1].upper()) ^ 0x40
    if len(text) == 1 and ord(text) < 0x80:
        return ord(text)
    raise SpecError(f"--escape: want caret notation like '^]' or one ASCII character, "
                    f"got {text!r}")


def escape_name(b: int) -> str:
    return f"Ctrl-{chr(b ^ 0x40)}" if b < 0x20 else repr(chr(b))


@contextmanager
def raw_terminal(fd: int):
    """Raw mode on `fd` while inside (a no-op when it is not a terminal)."""
    if not os.isatty(fd):
        yield False
        return
    saved = termios.tcgetattr(fd)

    def restore(*_):
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)
    # A signal that would kill us must not leave the terminal raw.
    old = {s: signal.signal(s, _raise_exit) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        tty.setraw(fd, termios.TCSADRAIN)
        attrs = termios.tcgetattr(fd)
        attrs[1] |= termios.OPOST | termios.ONLCR
        termios.tcsetattr(fd, termios.TCSADRAIN, attrs)
        yield True
    finally:
        restore()
        for s, h in old.items():
            signal.signal(s, h)


def _raise_exit(signum, frame):
    raise SystemExit(128 + signum)


def _write_all(fd: int, data: bytes) -> None:
    while data:
        n = os.write(fd, data)
        data = data[n:]


def attach(client, vm_id: str, *, stdin: int = 0, stdout: int = 1, stderr: int = 2,
           escape: int = 0x1D, include_history: bool = True) -> bool:
    """Run the session; True when the user detached, False when the console ended (the
    VMM process ended). Raises NodeError for a missing VM and other call errors."""
    vm = client.get_vm(vm_id)       # NOT_FOUND here, before touching the terminal
    keys: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
    stream = client.attach_console(vm_id, iter(keys.get, None),
                                   include_history=include_history)
    wake_r, wake_w = os.pipe()
    failure: list[NodeError] = []

    def pump_output():
        try:
            for data in stream:
                _write_all(stdout, data)
        except NodeError as e:
            failure.append(e)
        except OSError:
            pass        # our stdout went away: end the session
        finally:
            os.write(wake_w, b"x")

    from .format import state_name
    with raw_terminal(stdin) as raw:
        _write_all(stderr, f"nodectl: attached to VM {vm_id} ({state_name(vm.state)}); "
                           f"{escape_name(escape)} detaches\r\n".encode())
        out = threading.Thread(target=pump_output, name="console-output", daemon=True)
        out.start()
        detached = False
        try:
            while not detached:
                ready, _, _ = select.select([stdin, wake_r], [], [])
                if wake_r in ready:
                    break
                data = os.read(stdin, 4096)
                cut = data.find(bytes([escape])) if data else 0
                if cut >= 0:        # escape key or end of input
                    data, detached = data[:cut], True
                if data:
                    keys.put(data)
        finally:
            keys.put(None)          # ends the request stream (and gRPC's reader thread)
            stream.cancel()
            out.join(5)
            os.close(wake_r)
            os.close(wake_w)
        if raw:
            _write_all(stderr, b"\r\n")
    if failure:
        raise failure[0]
    return detached


def follow(client, vm_id: str, *, out=None, include_history: bool = True) -> None:
    """Read-only: StreamConsole to `out` (a binary file; stdout) until the VMM ends."""
    out = out or sys.stdout.buffer
    with client.stream_console(vm_id, include_history=include_history) as stream:
        for data in stream:
            out.write(data)
            out.flush()
