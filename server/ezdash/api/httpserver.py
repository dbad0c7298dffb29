"""The HTTP server: client addresses, timeouts, and answers Tornado would not give.

Made in one place (``make_http_server``) for ``ezdash serve``, the tests and the
benchmarks, so all of them run the same hardening:

- **Client address.** Tornado's ``xheaders=True`` believes ``X-Forwarded-For`` from
  anyone, so a client rotating the header gets a fresh rate-limit bucket per
  request and a forged address in the audit log. The server is made without it;
  ``client_address`` reads the header only when the socket peer is one of the
  proxies ``EZ_TRUST_PROXY`` names, and then takes the right-most hop that is not
  a trusted proxy (the left part of the header is whatever the client wrote).
- **Timeouts.** A connection must deliver a complete request head within
  ``EZ_HTTP_IDLE_TIMEOUT`` of starting to wait for one (Tornado keeps one timer for
  both an idle keep-alive connection and one trickling its headers), and a body
  within ``EZ_HTTP_BODY_TIMEOUT``; without them 500 slow connections are held for
  an hour each.
- **Oversized input gets an answer.** Tornado answers a head over its limit by
  closing the socket, and a body over ``max_body_size`` with a bare ``400``. Here
  the head limit answers ``431`` problem JSON (``GuardedStream``) and bodies are
  judged by the handlers (``APIHandler``: 413 problem JSON, decided from
  ``Content-Length`` before reading, counted as a chunked body arrives), so the
  server-wide body cap is only a backstop far above any limit.
- **Lingering close.** Closing a socket that still has unread request bytes makes
  the kernel send a reset, and a client still sending its 20 MB body then loses
  the 413 it was answered. A connection closed with input pending is shut for
  writing and drained for a bounded time and size first, as nginx and Apache do.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from typing import Any, cast

import orjson
from tornado.httpserver import HTTPServer
from tornado.iostream import IOStream, UnsatisfiableReadError
from tornado.web import Application

from ..settings import Network, Settings
from .errors import Problem

log = logging.getLogger("ezdash.http")

LINGER_S = 10.0
"""Longest a closed connection is drained of a request it was answered before sending."""
LINGER_QUIET_S = 2.0
"""...and how long it may stay silent meanwhile."""
LINGER_BYTES = 256 << 20
"""...and how much is read and thrown away at most."""
BODY_BACKSTOP = 1 << 40
"""Tornado's own body cap, never reached: handlers answer 413 far below it."""


def client_address(peer: str, forwarded: str | None, trusted: tuple[Network, ...]) -> str:
    """The address rate limits, audit and the access log use.

    The socket peer, unless the peer is a trusted proxy; then ``X-Forwarded-For`` is
    walked from the right (the hops our proxies appended) and the first address that
    is not itself a trusted proxy is the client. A malformed hop cannot have been
    written by our proxies, so the hop that passed it on is taken instead."""
    if not trusted or not forwarded or not _is_trusted(peer, trusted):
        return peer
    hop = peer
    for raw in reversed(forwarded.split(",")):
        candidate = _parse_hop(raw)
        if candidate is None:
            return hop
        hop = candidate
        if not _is_trusted(hop, trusted):
            return hop
    return hop  # every hop is one of ours: the left-most is the client


def _parse_hop(raw: str) -> str | None:
    text = raw.strip()
    if text.startswith("["):  # [v6]:port
        text = text[1 : text.find("]")] if "]" in text else ""
    elif text.count(":") == 1:  # v4:port
        text = text.split(":", 1)[0]
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None


def _is_trusted(address: str, trusted: tuple[Network, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in trusted if net.version == ip.version)


def _raw_problem(problem: Problem) -> bytes:
    body = orjson.dumps(problem.body())
    return (
        f"HTTP/1.1 {problem.status_code} {problem.title}\r\n"
        "Content-Type: application/problem+json\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode() + body


class GuardedStream(IOStream):
    """An IOStream that answers an oversized request head with 431 and closes with
    a lingering drain when request bytes are still coming (see the module doc)."""

    linger = False
    """Set by a handler that answered before reading the body it was sent."""
    reading_head = False
    head_answer = b""

    def read_until_regex(self, regex: bytes, max_bytes: int | None = None) -> Any:
        # Tornado reads request heads, and nothing else, with this method.
        self.reading_head = True
        future = super().read_until_regex(regex, max_bytes)
        cast("asyncio.Future[bytes]", future).add_done_callback(self._head_done)
        return future

    def _head_done(self, _: Any) -> None:
        self.reading_head = False

    def close_fd(self) -> None:
        sock = self.socket
        too_big = isinstance(self.error, UnsatisfiableReadError) and self.reading_head
        if too_big or self.linger or _has_unread(sock):
            self.socket = None  # type: ignore[assignment]  # ours now, see _linger
            asyncio.get_running_loop().create_task(
                _linger(sock, self.head_answer if too_big else b"")
            )
            return
        super().close_fd()


def _has_unread(sock: socket.socket) -> bool:
    try:
        return bool(sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT))
    except OSError:  # nothing pending (EAGAIN) or already broken
        return False


async def _linger(sock: socket.socket, answer: bytes) -> None:
    loop = asyncio.get_running_loop()
    try:
        if answer:
            await asyncio.wait_for(loop.sock_sendall(sock, answer), LINGER_QUIET_S)
        sock.shutdown(socket.SHUT_WR)  # the client sees our answer, then EOF
        deadline = loop.time() + LINGER_S
        drained = 0
        while drained < LINGER_BYTES:
            left = min(LINGER_QUIET_S, deadline - loop.time())
            if left <= 0:
                break
            data = await asyncio.wait_for(loop.sock_recv(sock, 1 << 16), left)
            if not data:
                break
            drained += len(data)
    except (OSError, TimeoutError):
        pass
    finally:
        sock.close()


class Server(HTTPServer):
    """Tornado's HTTPServer with ``GuardedStream`` connections."""

    head_answer = b""

    def handle_stream(self, stream: IOStream, address: tuple[Any, ...]) -> None:
        if type(stream) is IOStream:
            guarded = GuardedStream(
                stream.socket,
                max_buffer_size=stream.max_buffer_size,
                read_chunk_size=stream.read_chunk_size,
                max_write_buffer_size=stream.max_write_buffer_size,
            )
            guarded.head_answer = self.head_answer
            stream = guarded
        super().handle_stream(stream, address)


def make_http_server(app: Application, settings: Settings) -> Server:
    server = Server(
        app,
        xheaders=False,  # see client_address
        max_body_size=BODY_BACKSTOP,
        max_header_size=settings.max_header_bytes,
        idle_connection_timeout=settings.http_idle_timeout,
        body_timeout=settings.http_body_timeout,
    )
    server.head_answer = _raw_problem(
        Problem(
            431,
            f"the request head is larger than {settings.max_header_bytes} bytes",
            type="headers-too-large",
        )
    )
    return server
