"""paho-mqtt clients driven by an asyncio event loop (no thread per client).

paho's external-loop interface (``loop_read``/``loop_write``/``loop_misc`` and the socket
callbacks) lets one event loop serve thousands of clients: each socket is registered for reading
once; writes are collected and flushed once per loop turn (``call_soon``) instead of one
``add_writer``/``remove_writer`` pair per packet, which halves the system calls per publish. A
writer is registered only when the kernel's send buffer is full. Keep-alive (``loop_misc``) is
run by the owner for all clients in one sweep, not by one task per client.

No socketpair is created (paho only makes one for its own ``loop()``/threads), so a client costs
one file descriptor.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import Any

import paho.mqtt.client as mqtt


class AsyncioPaho:
    """Wire a set of paho clients to one asyncio loop. Call :meth:`attach` before connecting."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._pending: set[mqtt.Client] = set()
        self._flush_scheduled = False
        self._writers: set[int] = set()

    def attach(self, client: mqtt.Client) -> None:
        client.on_socket_open = self._on_open
        client.on_socket_close = self._on_close
        client.on_socket_register_write = self._on_register_write
        client.on_socket_unregister_write = self._on_unregister_write

    def _on_open(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        self._loop.add_reader(sock, client.loop_read)

    def _on_close(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        fd = _fileno(sock)
        if fd < 0:
            return
        self._loop.remove_reader(fd)
        if fd in self._writers:
            self._writers.discard(fd)
            self._loop.remove_writer(fd)
        self._pending.discard(client)

    def _on_register_write(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        self._pending.add(client)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _on_unregister_write(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        fd = _fileno(sock)
        if fd in self._writers:
            self._writers.discard(fd)
            self._loop.remove_writer(fd)

    def _flush(self) -> None:
        self._flush_scheduled = False
        pending, self._pending = self._pending, set()
        for client in pending:
            client.loop_write()
            sock = client.socket()
            if sock is not None and client.want_write():
                # Send buffer full: let the loop tell us when it drains.
                fd = _fileno(sock)
                if fd not in self._writers:
                    self._writers.add(fd)
                    self._loop.add_writer(fd, client.loop_write)


def _fileno(sock: Any) -> int:
    if isinstance(sock, socket.socket):
        with contextlib.suppress(OSError):
            return sock.fileno()
        return -1
    return int(sock.fileno())
