"""The HTTP server under the service: uvicorn with bounded connections and read deadlines.

Plain uvicorn keeps a connection open for as long as its client takes to send the request
headers and body, and accepts connections until the process runs out of file descriptors; many
half-sent requests (a slow-client attack, or a crowd of broken clients) then stall every
endpoint. :class:`BoundedH11Protocol` adds the two limits a reverse proxy would give:

- a **read deadline**: a request must be received completely (headers and body) within
  ``read_timeout_s`` of the connection starting to wait for it (on connect, and after each
  response); otherwise it gets ``408`` and the connection is closed;
- a **connection cap**: at most ``max_connections`` open connections. A new connection beyond
  it closes one that waits for a request, in this order: part of a request received, then sent
  nothing yet, then idle keep-alive ones that were served before; oldest first, and none that
  started waiting in the last :data:`EVICTION_GRACE_S`. A connection whose request is being
  handled is never closed; when none can be, the new connection is closed at once.

Normal clients send a request at once and read its answer, so a flood of half-sent requests
evicts its own connections, not theirs.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import resource
import socket
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from blendrank.errors import ConfigError

DEFAULT_MAX_CONNECTIONS = 1000
DEFAULT_READ_TIMEOUT_S = 10.0
# File descriptors the process needs besides client connections (model files, the listening
# socket, onnxruntime and torch threads' pipes, logs).
FD_HEADROOM = 64
MAX_HEADER_BYTES = 16 * 1024
# The listen backlog; asyncio also accepts up to this many connections in one loop turn before
# any of them is seen by the protocol, and closes evicted ones only in the next turn, so the
# cap leaves room for two such batches.
ACCEPT_BACKLOG = 64
# A connection that started waiting for its request less than this long ago is not evicted: a
# flood must not close a normal client whose request is arriving in several segments.
EVICTION_GRACE_S = 0.1
_TIMEOUT_BODY = b'{"detail":"request not received in time; send it again"}'
REQUEST_TIMEOUT_RESPONSE = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
    b"connection: close\r\ncontent-length: "
    + str(len(_TIMEOUT_BODY)).encode()
    + b"\r\n\r\n"
    + _TIMEOUT_BODY
)


class WaitingConnections:
    """The connections of one server that wait for a request, in eviction order: those with part
    of a request received, then new ones that have sent nothing yet, then idle keep-alive ones
    that have been served before (a client known to finish its requests); oldest first within
    each. Plus those closed by eviction and not yet gone. Every operation is O(1), so a flood of
    connections costs little per connection."""

    def __init__(self) -> None:
        # (dicts keep insertion order)
        self.partial: dict[BoundedH11Protocol, None] = {}
        self.fresh: dict[BoundedH11Protocol, None] = {}
        self.kept: dict[BoundedH11Protocol, None] = {}
        self.closing: set[BoundedH11Protocol] = set()

    def wait(self, conn: BoundedH11Protocol, served: bool) -> None:
        self.done(conn)
        (self.kept if served else self.fresh)[conn] = None

    def got_bytes(self, conn: BoundedH11Protocol) -> None:
        if conn in self.fresh or conn in self.kept:
            self.fresh.pop(conn, None)
            self.kept.pop(conn, None)
            self.partial[conn] = None

    def done(self, conn: BoundedH11Protocol) -> None:
        for queue in (self.partial, self.fresh, self.kept):
            queue.pop(conn, None)

    def victim(self, now: float, grace_s: float) -> BoundedH11Protocol | None:
        """The first connection in eviction order that has waited at least ``grace_s`` (a
        normal client between the segments of its request waits far less), or None."""
        for queue in (self.partial, self.fresh, self.kept):
            if queue:
                conn = next(iter(queue))
                if now - conn.waiting_since >= grace_s:
                    return conn
        return None


class BoundedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a read deadline per request and a cap on open connections
    (see the module docstring). Build it with :func:`server_config`."""

    def __init__(
        self,
        *args: Any,
        max_connections: int,
        read_timeout_s: float,
        waiting: WaitingConnections,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.max_connections = max_connections
        self.read_timeout_s = read_timeout_s
        self.waiting = waiting
        self.served = False  # a response has been sent on this connection
        self.waiting_since = 0.0  # loop time when it started waiting for its current request
        self.read_deadline: asyncio.TimerHandle | None = None  # None while a request is handled

    # -- waiting for a request -----------------------------------------------------------
    def _start_waiting(self) -> None:
        self._stop_waiting()
        self.waiting_since = self.loop.time()
        self.waiting.wait(self, self.served)
        self.read_deadline = self.loop.call_later(self.read_timeout_s, self._read_timed_out)

    def _stop_waiting(self) -> None:
        self.waiting.done(self)
        if self.read_deadline is not None:
            self.read_deadline.cancel()
            self.read_deadline = None

    def _read_timed_out(self) -> None:
        self.read_deadline = None
        partial = self in self.waiting.partial
        self.waiting.done(self)
        if self.transport.is_closing():
            return
        responding = (
            self.cycle is not None
            and self.cycle.response_started
            and not self.cycle.response_complete
        )
        if partial and not responding:
            self.transport.write(REQUEST_TIMEOUT_RESPONSE)
        self.transport.close()

    # -- uvicorn hooks ---------------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._start_waiting()
        if len(self.connections) - len(self.waiting.closing) > self.max_connections:
            self._evict()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_waiting()
        self.waiting.closing.discard(self)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.read_deadline is not None:
            self.waiting.got_bytes(self)
        super().data_received(data)

    def handle_events(self) -> None:
        super().handle_events()
        if self.read_deadline is not None and self.conn.their_state in (h11.DONE, h11.MUST_CLOSE):
            self._stop_waiting()  # the whole request is in: the handler's time is not bounded here

    def on_response_complete(self) -> None:
        self.served = True
        if not self.transport.is_closing():
            self._start_waiting()  # before super(): it handles a pipelined request at once
        super().on_response_complete()

    def _evict(self) -> None:
        """Close the first connection in :class:`WaitingConnections`' order that has waited
        longer than the grace period; when there is none (every other connection is busy or
        just started its request), close this new one instead."""
        victim = (
            self.waiting.victim(self.loop.time(), min(EVICTION_GRACE_S, self.read_timeout_s / 2))
            or self
        )
        victim._stop_waiting()
        self.waiting.closing.add(victim)
        victim.transport.close()


def connection_cap(max_connections: int) -> int:
    """``max_connections`` lowered, when needed, so that connections cannot exhaust the
    process's file-descriptor limit (``RLIMIT_NOFILE`` less :data:`FD_HEADROOM` and two accept
    batches of :data:`ACCEPT_BACKLOG`)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return max_connections
    return max(1, min(max_connections, soft - FD_HEADROOM - 2 * ACCEPT_BACKLOG))


def raise_fd_limit() -> int:
    """Raise this process's soft file-descriptor limit to its hard limit (what servers such as
    nginx and Go programs do) and return the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):  # e.g. an unlimited hard limit the kernel refuses
            pass
    return soft


def server_config(
    app: Any,
    *,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
    read_timeout_s: float = DEFAULT_READ_TIMEOUT_S,
    keep_alive_s: float = 5.0,
    **uvicorn_kwargs: Any,
) -> uvicorn.Config:
    """A uvicorn config that serves ``app`` with :class:`BoundedH11Protocol`: at most
    ``max_connections`` connections (see :func:`connection_cap`), requests received within
    ``read_timeout_s``, idle keep-alive connections closed after ``keep_alive_s``, request
    headers of at most 16 KiB and a listen backlog of :data:`ACCEPT_BACKLOG`.
    ``uvicorn_kwargs`` go to :class:`uvicorn.Config` (host, port, log_level, ...)."""
    if max_connections < 1:
        raise ConfigError(f"max_connections must be at least 1, got {max_connections}")
    if not read_timeout_s > 0:
        raise ConfigError(f"read timeout must be positive seconds, got {read_timeout_s}")
    protocol = functools.partial(
        BoundedH11Protocol,
        max_connections=connection_cap(max_connections),
        read_timeout_s=read_timeout_s,
        waiting=WaitingConnections(),
    )
    uvicorn_kwargs.setdefault("log_level", "warning")
    uvicorn_kwargs.setdefault("backlog", ACCEPT_BACKLOG)
    uvicorn_kwargs.setdefault("access_log", False)
    return uvicorn.Config(
        app,
        http=protocol,
        timeout_keep_alive=keep_alive_s,  # type: ignore[arg-type]
        h11_max_incomplete_event_size=MAX_HEADER_BYTES,
        **uvicorn_kwargs,
    )


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port``, bound before anything says it is serving.
    A port outside 0-65535, a port in use or an unknown host is a :class:`ConfigError`."""
    if not 0 <= port <= 65535:
        raise ConfigError(f"--port {port}: not a TCP port; choose one in 1-65535")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ConfigError(
            f"--host {host}: cannot resolve it ({exc.strerror}); give an interface name or "
            "address such as 127.0.0.1 or 0.0.0.0"
        ) from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise ConfigError(
                f"--port {port}: already in use on {host}; stop the process using it or "
                "choose another --port"
            ) from None
        raise ConfigError(
            f"--host {host} --port {port}: cannot listen there ({exc.strerror}); "
            "choose another address or port"
        ) from None
    sock.listen(ACCEPT_BACKLOG)
    sock.set_inheritable(True)
    return sock
