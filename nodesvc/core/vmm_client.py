"""asyncio client for a VMM process's control socket (protocol: nodesvc.vmm.control).

Requests are typed actions (nodesvc.vmm.actions): `await client.call(actions.Pause())`
returns the action's result dataclass or raises its typed `ActionError`."""

from __future__ import annotations

import array
import asyncio
import os
import socket
import itertools
from typing import Callable

from ..vmm import actions, control


class ControlClient:
    """One connection. Responses are matched by id; events go to `on_event`, and
    `on_event({})` (no "event" key) tells that the connection ended."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 on_event: Callable[[dict], None]):
        self._reader, self._writer, self._on_event = reader, writer, on_event
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future] = {}
        self._hello = asyncio.get_running_loop().create_future()
        self._task = asyncio.create_task(self._read_loop())
        self.read_done = self._task     # done once the VMM's last line has been read
        self._lock = asyncio.Lock()     # one request at a time, like the VMM serves them
        self.closed = self._closing = False

    @classmethod
    async def connect(cls, path: str, on_event: Callable[[dict], None]) -> "ControlClient":
        with control.ShortPath(path) as p:
            reader, writer = await asyncio.open_unix_connection(p, limit=control.MAX_LINE)
        return cls(reader, writer, on_event)

    async def hello(self, timeout: float) -> dict:
        msg = await asyncio.wait_for(asyncio.shield(self._hello), timeout)
        if not msg:
            raise actions.Failed("the VMM closed its control connection")
        return msg

    async def call(self, action: actions.Action, timeout: float = 10.0,
                   trace: str | None = None, files: dict | None = None):
        """Run `action` in the VMM; its typed result. `trace`: W3C traceparent the VMM
        links its phase timings to."""
        async with self._lock:
            if self.closed:
                raise actions.Failed("the VMM control connection is closed")
            rid = next(self._ids)
            fut = asyncio.get_running_loop().create_future()
            self._pending[rid] = fut
            try:
                req = actions.encode_request(action, rid, trace)
                if files:
                    req["files"] = list(files)
                    await self._writer.drain()      # nothing queued: the fds go with this line
                    self._send_with_fds(control.encode(req), list(files.values()))
                else:
                    self._writer.write(control.encode(req))
                await self._writer.drain()
                msg = await asyncio.wait_for(fut, timeout)
            except (OSError, asyncio.TimeoutError) as e:
                raise actions.Failed(f"VMM did not answer {action.name!r}: "
                                     f"{type(e).__name__} {e}") from None
            finally:
                self._pending.pop(rid, None)
        if not msg.get("ok"):
            raise actions.error(msg.get("kind"), msg.get("error", "failed"))
        return actions.decode_result(action, msg.get("result"))

    def _send_with_fds(self, data: bytes, fds: list[int]) -> None:
        raw = self._writer.get_extra_info("socket")
        with socket.socket(fileno=os.dup(raw.fileno())) as s:   # the same socket
            s.setblocking(True)
            s.settimeout(5.0)
            sent = s.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                       array.array("i", fds).tobytes())])
            if sent < len(data):
                s.sendall(data[sent:])

    async def _read_loop(self) -> None:
        try:
            while True:
                line = await self._reader.readline()
                if not line:
                    break
                try:
                    msg = control.decode(line)
                except control.ProtocolError:
                    continue
                if "event" in msg:
                    if msg["event"] == "hello" and not self._hello.done():
                        self._hello.set_result(msg)
                    self._on_event(msg)
                else:
                    fut = self._pending.get(msg.get("id"))
                    if fut is not None and not fut.done():
                        fut.set_result(msg)
        except (OSError, ValueError, asyncio.LimitOverrunError):
            pass
        finally:
            self.closed = True
            err = actions.Failed("the VMM closed its control connection")
            for fut in self._pending.values():
                if not fut.done():
                    fut.set_exception(err)
            if not self._hello.done():
                self._hello.set_result({})
            if not self._closing:   # the VMM hung up (not us)
                self._on_event({})

    def close(self) -> None:
        self.closed = self._closing = True
        self._task.cancel()
        self._writer.close()
