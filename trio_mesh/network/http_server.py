"""A small HTTP/1.1 server for the admin API (and the Prometheus sink) on the project's codec.

One task per connection in the server's nursery; every connection is bounded: its request
head (431), its body (413), the time a request may take to arrive (408, so a slowloris
client only holds its own slot), the idle time between keep-alive requests and the number of
connections (over it: 503 and close). Bad input gets a JSON error; a handler that raises gets
a 500 and a log line. Nothing a client does ends the accept loop.
"""

from __future__ import annotations

import errno
import json
import logging
import socket
import traceback
from collections.abc import Awaitable, Callable
from urllib.parse import parse_qs, unquote

import attrs
import trio

from ..protocols.http1 import (
    Body,
    EndOfMessage,
    H1Error,
    Limits,
    RequestEvent,
    RequestHead,
    RequestParser,
    encode_response_head,
)
from .throttled_log import ThrottledLog

log = logging.getLogger("trio_mesh.admin")

# As trio's serve_listeners: running out of descriptors is overload (back off), not a crash.
_OVERLOAD_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
# The connection died between its handshake and accept() (or a firewall refused it): skip it,
# as the proxy's own listeners do; raised, it would end the proxy's nursery.
_TRANSIENT_ERRNOS = {errno.ECONNABORTED, errno.EPROTO, errno.EPERM, errno.EINTR}
_ACCEPT_BACKOFF = 0.1
_READ_SIZE = 16384


@attrs.frozen
class HttpRequest:
    method: str
    path: str  # percent-decoded, without the query
    query: dict[str, list[str]]  # blank values kept: ``?graceful`` is ``{"graceful": [""]}``
    headers: dict[str, str]  # lower-case names; a repeated field keeps its last value
    body: bytes = b""


@attrs.frozen
class HttpResponse:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()


Handler = Callable[[HttpRequest], Awaitable[HttpResponse]]


@attrs.frozen
class HttpLimits:
    """Every budget of one server. The defaults fit an operator's curl and a scraper."""

    max_head_bytes: int = 16 * 1024
    max_body_bytes: int = 64 * 1024
    #: Seconds from a request's first byte to its last (and to write its response).
    request_timeout: float = 10.0
    #: Seconds a keep-alive connection may wait for its next request.
    idle_timeout: float = 60.0
    max_connections: int = 64
    #: Seconds a handler may take (a fan-out to a stuck worker): then 504.
    handler_timeout: float = 30.0


def json_error(status: int, message: str) -> HttpResponse:
    return HttpResponse(status, json.dumps({"error": message}).encode() + b"\n")


def from_another_site(req: HttpRequest, changes: bool) -> bool:
    """A browser sent it for a page of another site (CSRF: a form posted to 127.0.0.1 fails
    the health check or drains the listeners). Browsers mark such requests
    (``Sec-Fetch-Site``, and ``Origin`` on a POST); curl and Prometheus send neither."""
    if req.headers.get("sec-fetch-site") in ("cross-site", "same-site"):
        return True
    origin = req.headers.get("origin")
    if not changes or origin is None:
        return False
    host = req.headers.get("host", "")
    return origin.lower() not in (f"http://{host}".lower(), f"https://{host}".lower())


_LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})


def loopback_host(host: str | None) -> bool:
    """Whether a request's ``Host`` names this machine's loopback (or is absent: HTTP/1.0).
    Any other name reaching a loopback-only port was made to point here (DNS rebinding)."""
    if host is None:
        return True
    name = host.strip().lower()
    if name.startswith("["):
        name = name[: name.find("]") + 1]
    elif name.count(":") == 1:
        name = name.split(":", 1)[0]
    return (
        name in _LOOPBACK_NAMES
        or name.endswith(".localhost")
        or (name.startswith("127.") and name.replace(".", "").isdigit())
    )


async def serve_http(
    sock: socket.socket,
    handler: Handler,
    *,
    name: str,
    limits: HttpLimits | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``handler`` on ``sock`` (bound and listening) until cancelled; closes ``sock``."""
    server = _HttpServer(handler, name, limits or HttpLimits())
    listener = trio.socket.from_stdlib_socket(sock)
    try:
        async with trio.open_nursery() as nursery:
            task_status.started()
            await server.accept(listener, nursery)
    finally:
        listener.close()


class _HttpServer:
    def __init__(self, handler: Handler, name: str, limits: HttpLimits) -> None:
        self.handler = handler
        self.name = name
        self.limits = limits
        self.active = 0
        self.refusing = 0  # over-limit connections being sent their 503
        self.parser_limits = Limits(
            max_head_bytes=limits.max_head_bytes,
            max_url_bytes=min(8192, limits.max_head_bytes),
            max_body_bytes=limits.max_body_bytes,
        )
        self.bad_input_log = ThrottledLog(log)
        self.failure_log = ThrottledLog(log)

    async def accept(self, listener: trio.socket.SocketType, nursery: trio.Nursery) -> None:
        while True:
            try:
                client, _ = await listener.accept()
            except OSError as exc:
                if exc.errno in _TRANSIENT_ERRNOS:
                    continue
                if exc.errno not in _OVERLOAD_ERRNOS:
                    raise
                self.bad_input_log.log(
                    logging.WARNING, "%s: accept failed (%s), backing off", self.name, exc
                )
                await trio.sleep(_ACCEPT_BACKOFF)
                continue
            stream = trio.SocketStream(client)
            if self.active >= self.limits.max_connections:
                if self.refusing >= self.limits.max_connections:
                    # A flood: no reply at all, so refusals cannot pile up tasks either.
                    client.close()
                    continue
                self.refusing += 1
                nursery.start_soon(self._refuse, stream)
                continue
            self.active += 1
            nursery.start_soon(self._connection, stream)

    async def _refuse(self, stream: trio.SocketStream) -> None:
        """Over the connection limit: a 503 if the socket takes it at once, then close."""
        self.bad_input_log.log(logging.WARNING, "%s: too many connections", self.name)
        try:
            with trio.move_on_after(1.0):
                await self._send(stream, json_error(503, "too many admin connections"), False, True)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            self.refusing -= 1
            await trio.aclose_forcefully(stream)

    async def _connection(self, stream: trio.SocketStream) -> None:
        parser = RequestParser(self.parser_limits)
        pending: list[RequestEvent] = []
        try:
            while True:
                try:
                    got = await self._read_request(stream, parser, pending)
                except H1Error as exc:
                    self.bad_input_log.log(
                        logging.INFO, "%s: bad request: %s", self.name, exc.reason
                    )
                    with trio.move_on_after(self.limits.request_timeout):
                        await self._send(stream, json_error(exc.status, exc.reason), False, True)
                    return
                if got is None:
                    return
                head, body = got
                response = await self._call(head, body)
                keep = head.keep_alive  # a bad request pipelined after it: its 400 comes next
                with trio.move_on_after(self.limits.request_timeout) as scope:
                    await self._send(stream, response, keep, head.method != b"HEAD")
                if scope.cancelled_caught or not keep:
                    return
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the client went away
        finally:
            self.active -= 1
            await trio.aclose_forcefully(stream)

    async def _read_request(
        self, stream: trio.SocketStream, parser: RequestParser, pending: list[RequestEvent]
    ) -> tuple[RequestHead, bytes] | None:
        """The next whole request; None when the client closed between requests or stayed
        idle too long. Raises H1Error for bad input (408 for a request too slow to arrive)."""
        head: RequestHead | None = None
        body: list[bytes] = []
        now = trio.current_time()
        started = bool(pending) or not parser.between_requests
        timeout = self.limits.request_timeout if started else self.limits.idle_timeout
        with trio.CancelScope(deadline=now + timeout) as scope:
            while True:
                while pending:
                    event = pending.pop(0)
                    if isinstance(event, RequestHead):
                        head = event
                        if event.expect_continue:
                            await stream.send_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                    elif isinstance(event, Body):
                        body.append(event.data)
                    elif isinstance(event, EndOfMessage):
                        assert head is not None
                        return head, b"".join(body)
                if parser.error is not None:
                    raise parser.error
                data = await stream.receive_some(_READ_SIZE)
                if not started:
                    started = True
                    scope.deadline = trio.current_time() + self.limits.request_timeout
                if not data:
                    parser.feed_eof()  # raises inside a request
                    return None
                pending.extend(parser.feed(data))
        if started:
            raise H1Error(408, "request timeout")
        return None

    async def _call(self, head: RequestHead, body: bytes) -> HttpResponse:
        try:
            request = HttpRequest(
                method=head.method.decode("ascii"),
                path=unquote(head.path.decode("latin-1"), errors="replace"),
                query=parse_qs(
                    head.query.decode("latin-1"), keep_blank_values=True, errors="replace"
                ),
                headers={k.decode("latin-1"): v.decode("latin-1") for k, v in head.headers},
                body=body,
            )
            with trio.move_on_after(self.limits.handler_timeout):
                return await self.handler(request)
            self.failure_log.log(
                logging.WARNING, "%s: %s timed out", self.name, head.path.decode("latin-1")
            )
            return json_error(504, "the admin handler timed out")
        except Exception:
            # A handler's bug is the admin API's problem, never the proxy's.
            self.failure_log.log(
                logging.ERROR,
                "%s: handler failed on %s:\n%s",
                self.name,
                head.path.decode("latin-1"),
                traceback.format_exc(),
            )
            return json_error(500, "internal error")

    async def _send(
        self, stream: trio.SocketStream, response: HttpResponse, keep: bool, with_body: bool
    ) -> None:
        headers = [(b"content-type", response.content_type.encode("latin-1"))]
        headers += [(k.encode("latin-1"), v.encode("latin-1")) for k, v in response.headers]
        headers.append((b"cache-control", b"no-cache, max-age=0"))
        headers.append((b"x-content-type-options", b"nosniff"))
        if not keep:
            headers.append((b"connection", b"close"))
        out = encode_response_head(response.status, None, headers, length=len(response.body))
        await stream.send_all(out + response.body if with_body else out)
