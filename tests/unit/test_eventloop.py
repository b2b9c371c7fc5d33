import os
import threading

from nodesvc.vmm.console import ConsoleInput, StdoutSink
from nodesvc.vmm.eventloop import EventLoop


def test_reader_callbacks_and_call_soon():
    loop = EventLoop()
    r, w = os.pipe()
    got, done = [], threading.Event()

    def readable(_ev):
        got.append(os.read(r, 100))
        done.set()

    loop.add_reader(r, readable)
    loop.start()
    try:
        os.write(w, b"ping")
        assert done.wait(2)
        assert got == [b"ping"]
        ran = threading.Event()
        loop.call_soon(ran.set)
        assert ran.wait(2)
    finally:
        loop.close()
        os.close(r), os.close(w)


def test_failing_callback_is_reported_not_fatal():
    errors = []
    loop = EventLoop(on_error=errors.append)
    loop.start()
    try:
        boom = threading.Event()

        def fail():
            boom.set()
            raise RuntimeError("device bug")

        loop.call_soon(fail)
        assert boom.wait(2)
        ok = threading.Event()
        loop.call_soon(ok.set)  # loop still alive
        assert ok.wait(2)
        assert isinstance(errors[0], RuntimeError)
    finally:
        loop.close()


def test_console_input_escape_sequence():
    loop = EventLoop()
    r, w = os.pipe()
    fed, escaped = [], threading.Event()
    ConsoleInput(loop, r, fed.append, on_escape=escaped.set, escape=True)
    loop.start()
    try:
        os.write(w, b"ab\x01\x01c\x01x")
        assert escaped.wait(2)
        assert b"".join(fed) == b"ab\x01c"
    finally:
        loop.close()
        os.close(r), os.close(w)


def test_stdout_sink_never_blocks_and_counts_drops():
    r, w = os.pipe()
    os.set_blocking(w, True)
    sink = StdoutSink(w, limit=1024)
    # Nobody reads r: the pipe fills, the writer thread blocks, the sink must not.
    for _ in range(200):
        sink.write(b"x" * 1024)
    assert sink.dropped > 0
    os.close(r)  # unblock the writer (EPIPE) so it can finish
    sink.close()
    os.close(w)
