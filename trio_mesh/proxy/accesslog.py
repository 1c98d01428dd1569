"""Access logs, MOSN-style: ``%variable%`` templates (or JSON lines) compiled once per log.

The access log is an observer of the end of requests (``proxy/observers.py``): it gets each
request's :class:`~trio_mesh.proxy.record.RequestRecord` in :meth:`AccessLog.log`, which
formats the line on the spot and hands it to a bounded memory channel without
waiting: a full channel drops the line and counts it, so a slow disk never slows requests. The
writer task, :meth:`AccessLog.run`, runs in the server's nursery, takes whatever is queued,
writes it in one call from a worker thread and flushes; when cancelled it writes what is still
queued and closes the file.

Text format: ``%name%`` is a variable, anything else is literal text (``%%`` is a literal
``%``; a ``%`` that does not start a ``%name%`` without spaces stays as it is). A ``%name%``
that names no variable is a configuration error, found by :func:`validate_log_format` and by
:class:`AccessLog` itself. Missing values render as ``-``; durations render as Go's
``time.Duration`` does (``1.234ms``, ``2m3.5s``), start times as MOSN's
``2006/01/02 15:04:05.000`` in local time. Control characters in request-supplied text
(method, path, authority, user agent, request id) are escaped (``\\x0a``), so one request is
always one line.

``log_format: json``: one JSON object per line, every variable a key in a fixed order,
durations as float seconds, counts as numbers, missing values as ``null``.

The downstream connection's TLS (Envoy's ``%DOWNSTREAM_PEER_SUBJECT%``,
``%DOWNSTREAM_TLS_VERSION%``... and ``%REQUESTED_SERVER_NAME%``) is read from the record's
``tls`` (the connection's :class:`~trio_mesh.network.tls.TlsInfo`, a reference) only when a
line is written: ``-`` (``null``) on a plaintext connection, and for the peer's fields when the
client presented no certificate. Several SANs are ``,``-joined, as Envoy does.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from operator import attrgetter
from typing import TYPE_CHECKING, Any, TextIO

import trio

from ..config.logformat import (
    JSON_FORMAT,
    RECORDED,
    TLS_VARIABLES,
    parse_log_format,
)
from ..config.model import AccessLogConfig
from .record import RequestRecord

if TYPE_CHECKING:
    from ..network.tls import TlsInfo

log = logging.getLogger("trio_mesh.accesslog")

#: MOSN's ``types.DefaultAccessLogFormat``.
DEFAULT_FORMAT = (
    "%start_time% %request_received_duration% %response_received_duration% %bytes_sent%"
    " %bytes_received% %protocol% %response_code% %duration% %response_flag% %response_code%"
    " %upstream_local_address% %downstream_local_address% %downstream_remote_address%"
    " %upstream_host%"
)
#: Lines queued between ``log`` and the writer before ``log`` starts dropping.
DEFAULT_MAX_QUEUED = 4096
#: How long the writer may take, once cancelled, to write what is queued and close the file.
CLOSE_TIMEOUT = 5.0
STDOUT = "stdout"
STDERR = "stderr"


# ---------------------------------------------------------------------------------------------
# Rendering values


def go_duration(seconds: float) -> str:
    """``seconds`` as Go's ``time.Duration.String()`` writes it: ``0s``, ``850ns``,
    ``1.5µs``, ``1.234ms``, ``2.5s``, ``1m30s``, ``1h0m0s``."""
    ns = round(seconds * 1e9)
    sign = "-" if ns < 0 else ""
    ns = abs(ns)
    if ns < 1_000_000_000:
        if ns == 0:
            return "0s"
        if ns < 1_000:
            return f"{sign}{ns}ns"
        if ns < 1_000_000:
            return f"{sign}{_decimal(*divmod(ns, 1_000), 3)}µs"
        return f"{sign}{_decimal(*divmod(ns, 1_000_000), 6)}ms"
    whole_seconds, fraction = divmod(ns, 1_000_000_000)
    text = f"{_decimal(whole_seconds % 60, fraction, 9)}s"
    minutes = whole_seconds // 60
    if minutes:
        text = f"{minutes % 60}m{text}"
        if minutes >= 60:
            text = f"{minutes // 60}h{text}"
    return sign + text


def _decimal(integer: int, fraction: int, digits: int) -> str:
    """``integer.fraction`` (``fraction`` of ``digits`` digits) without trailing zeros."""
    decimals = f"{fraction:0{digits}d}".rstrip("0")
    return f"{integer}.{decimals}" if decimals else str(integer)


_CONTROL = {code: f"\\x{code:02x}" for code in (*range(0x20), 0x7F)}


def _clean(text: str) -> str:
    """``text`` safe for a one-line log: control characters and lone surrogates escaped."""
    if text.isprintable():
        return text
    return text.encode("utf-8", "backslashreplace").decode("utf-8").translate(_CONTROL)


def _start_time_renderer() -> Callable[[float], str]:
    """MOSN's ``2006/01/02 15:04:05.000`` in local time, milliseconds truncated as Go does.
    The date and time up to the second is cached: consecutive requests share it."""
    cached_second = -1
    cached_prefix = ""

    def render(timestamp: float) -> str:
        nonlocal cached_second, cached_prefix
        second, millis = divmod(int(timestamp * 1000), 1000)
        if second != cached_second:
            cached_prefix = time.strftime("%Y/%m/%d %H:%M:%S", time.localtime(second))
            cached_second = second
        return f"{cached_prefix}.{millis:03d}"

    return render


Getter = Callable[[RequestRecord], Any]
TlsGetter = Callable[["TlsInfo"], "str | None"]


def _joined(names: tuple[str, ...]) -> str | None:
    return ",".join(names) if names else None


#: What each TLS variable reads of a TlsInfo (Envoy's renderings: a serial in lower-case hex,
#: the fingerprint the lower-case hex SHA-256 of the DER certificate).
_TLS_FIELDS: dict[str, TlsGetter] = {
    "requested_server_name": lambda tls: tls.sni,
    "DOWNSTREAM_TLS_VERSION": lambda tls: tls.version,
    "DOWNSTREAM_TLS_CIPHER": lambda tls: tls.cipher,
    "DOWNSTREAM_PEER_SUBJECT": lambda tls: tls.peer_subject,
    "DOWNSTREAM_PEER_ISSUER": lambda tls: tls.peer_issuer,
    "DOWNSTREAM_PEER_URI_SAN": lambda tls: _joined(tls.peer_uri_sans),
    "DOWNSTREAM_PEER_DNS_SAN": lambda tls: _joined(tls.peer_dns_sans),
    "DOWNSTREAM_PEER_SERIAL": lambda tls: tls.peer_serial.lower() if tls.peer_serial else None,
    "DOWNSTREAM_PEER_FINGERPRINT_256": lambda tls: (
        hashlib.sha256(tls.peer_cert_der).hexdigest() if tls.peer_cert_der else None
    ),
    "DOWNSTREAM_LOCAL_SUBJECT": lambda tls: tls.local_subject,
    "DOWNSTREAM_LOCAL_URI_SAN": lambda tls: _joined(tls.local_uri_sans),
}
assert tuple(_TLS_FIELDS) == TLS_VARIABLES, "trio_mesh.config.logformat.TLS_VARIABLES"
#: A plaintext request's TLS keys in a JSON line.
_TLS_NULLS: dict[str, None] = dict.fromkeys(TLS_VARIABLES)


def _tls_getters(get_value: TlsGetter) -> tuple[Getter, Getter]:
    def text(info: RequestRecord) -> str:
        tls = info.tls
        if tls is None:
            return "-"
        value = get_value(tls)
        return _clean(value) if value else "-"

    def json_value(info: RequestRecord) -> str | None:
        tls = info.tls
        return None if tls is None else get_value(tls) or None

    return text, json_value


def _text_getters() -> dict[str, tuple[Getter, Getter]]:
    """Variable name -> (text getter, JSON getter), in the order JSON lines list them."""
    render_start = _start_time_renderer()

    def start_time(info: RequestRecord) -> str:
        return render_start(info.start_time) if info.start_time else "-"

    def start_time_json(info: RequestRecord) -> str | None:
        return render_start(info.start_time) if info.start_time else None

    def duration(name: str) -> tuple[Getter, Getter]:
        get = attrgetter(name)

        def text(info: RequestRecord) -> str:
            value = get(info)
            return "-" if value is None else go_duration(value)

        return text, get

    def number(name: str) -> tuple[Getter, Getter]:
        get = attrgetter(name)

        def text(info: RequestRecord) -> str:
            value = get(info)
            return "-" if value is None else str(value)

        return text, get

    def string(name: str) -> tuple[Getter, Getter]:
        get = attrgetter(name)  # the record's attribute

        def text(info: RequestRecord) -> str:
            value = get(info)
            return _clean(value) if value else "-"

        def json_value(info: RequestRecord) -> str | None:
            return get(info) or None

        return text, json_value

    return {
        "start_time": (start_time, start_time_json),
        "request_received_duration": duration("request_received_duration"),
        "response_received_duration": duration("response_received_duration"),
        "duration": duration("duration"),
        "bytes_sent": number("bytes_sent"),
        "bytes_received": number("bytes_received"),
        "protocol": string("protocol"),
        "response_code": number("response_code"),
        "response_flag": string("response_flag"),
        "upstream_host": string("upstream_host"),
        "upstream_cluster": string("upstream_cluster"),
        "downstream_local_address": string("downstream_local_address"),
        "downstream_remote_address": string("downstream_remote_address"),
        "request_id": string("request_id"),
        "method": string("method"),
        "path": string("path"),
        "authority": string("authority"),
        "user_agent": string("user_agent"),
        "route_name": string("route_name"),
        "upstream_transport_failure_reason": string("upstream_transport_failure_reason"),
        # MOSN's variables of an RPC (xprotocol) request: types.VarHeaderRPCService/Method
        "x-mosn-rpc-service": string("rpc_service"),
        "x-mosn-rpc-method": string("rpc_method"),
        # tracing (tracing/tracer.py): "-" / null when tracing is off
        "TRACE_ID": string("trace_id"),
        "SPAN_ID": string("span_id"),
        **{name: _tls_getters(get) for name, get in _TLS_FIELDS.items()},
    }


#: The variables JSON lines carry, in their order (the config layer knows the same names).
VARIABLES = tuple(_text_getters())
assert VARIABLES == RECORDED, "trio_mesh.config.logformat.RECORDED is out of date"


def _dash(info: RequestRecord) -> str:
    return "-"


def compile_format(fmt: str | None) -> Callable[[RequestRecord], str]:
    """A function from a :class:`RequestRecord` to one log line (no newline). ``None`` or ``""``:
    MOSN's default format; ``"json"``: JSON lines. Raises ``ValueError`` for an unknown
    variable."""
    getters = _text_getters()
    if fmt == JSON_FORMAT:
        pairs = tuple(
            (name, getter[1]) for name, getter in getters.items() if name not in _TLS_FIELDS
        )
        tls_pairs = tuple(_TLS_FIELDS.items())
        encode = json.JSONEncoder(separators=(",", ":"), check_circular=False).encode

        def format_json(info: RequestRecord) -> str:
            line = {name: get(info) for name, get in pairs}
            tls = info.tls
            if tls is None:  # plaintext: one update, not a call per TLS key
                line.update(_TLS_NULLS)
            else:
                for name, get in tls_pairs:
                    line[name] = get(tls) or None
            return encode(line)

        return format_json

    literals, names = parse_log_format(fmt or DEFAULT_FORMAT)
    # The literals become one str.format template, the variables its positional arguments.
    template = "{}".join(text.replace("{", "{{").replace("}", "}}") for text in literals).format
    text_getters = tuple(getters[name][0] if name in getters else _dash for name in names)

    def format_text(info: RequestRecord) -> str:
        return template(*[get(info) for get in text_getters])

    return format_text


# ---------------------------------------------------------------------------------------------
# The log and its writer


class AccessLog:
    """One access log: a compiled format, a bounded queue, and the writer task :meth:`run`.

    Counters: ``written`` lines written; ``dropped`` lines ``log`` refused (queue full, writer
    gone, or a value it could not format); ``failed`` lines lost to write errors.
    """

    def __init__(
        self,
        config: AccessLogConfig,
        *,
        max_queued: int = DEFAULT_MAX_QUEUED,
        close_timeout: float = CLOSE_TIMEOUT,
    ) -> None:
        self.config = config
        self.path = config.log_path
        #: ``format(info) -> str``: the compiled format, one line without its newline.
        self.format: Callable[[RequestRecord], str] = compile_format(config.log_format)
        self.close_timeout = close_timeout
        self.written = 0
        self.dropped = 0
        self.failed = 0
        self._format_errors = 0
        self._write_failing = False
        self._started = False
        self._send, self._receive = trio.open_memory_channel[str](max_queued)

    def __repr__(self) -> str:
        return f"<AccessLog {self.path!r} written={self.written} dropped={self.dropped}>"

    def log(self, info: RequestRecord) -> None:
        """Queue the line for ``info``. Never blocks, never raises: drops and counts instead."""
        try:
            line = self.format(info)
        except Exception:
            self.dropped += 1
            self._format_errors += 1
            if self._format_errors == 1:  # a proxy bug: say it once, not once per request
                log.exception("access log %s: cannot format %r", self.path, info)
            return
        try:
            self._send.send_nowait(line)
        except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
            self.dropped += 1

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The writer. Opens the log (an ``OSError`` naming the path if it cannot, before
        ``started``), then writes queued lines in batches until cancelled; then writes what is
        left and closes the file. Runs once per :class:`AccessLog`."""
        if self._started:
            raise RuntimeError(f"access log {self.path}: run() can only run once")
        self._started = True
        # Shielded so that an opened file always reaches the finally below that closes it.
        with trio.CancelScope(shield=True):
            stream, owned = await trio.to_thread.run_sync(self._open)
        receive = self._receive
        try:
            task_status.started()
            while True:
                batch = [await receive.receive()]
                _drain(receive, batch)
                # Shielded only against delivering Cancelled while the thread writes (it could
                # not be interrupted anyway): the batch is always counted, and cancellation
                # arrives at the next receive().
                with trio.CancelScope(shield=True):
                    result = await trio.to_thread.run_sync(_write, stream, batch)
                self._count(batch, result)
        finally:
            # No checkpoint between draining and closing: every line is either taken here or
            # refused (and counted) by log().
            batch = []
            _drain(receive, batch)
            receive.close()
            deadline = trio.current_time() + self.close_timeout
            with trio.CancelScope(deadline=deadline, shield=True) as scope:
                result = await trio.to_thread.run_sync(
                    _write_and_close, stream, owned, batch, abandon_on_cancel=True
                )
                self._count(batch, result)
            if scope.cancelled_caught:  # the thread goes on and closes the file when it can
                log.warning(
                    "access log %s: last %d lines not written within %ss of stopping",
                    self.path,
                    len(batch),
                    self.close_timeout,
                )

    def check(self) -> None:
        """Open and close the log once: start-up fails on an unwritable path before any port
        is bound, not after."""
        stream, owned = self._open()
        if owned:
            stream.close()

    def _open(self) -> tuple[TextIO, bool]:
        """The stream to write to, and whether this log owns (and closes) it."""
        path = self.path
        if path in (STDOUT, STDERR):
            stream = sys.stdout if path == STDOUT else sys.stderr
            if stream is None:
                raise OSError(errno.EBADF, f"cannot open access log: no {path}", path)
            return stream, False
        try:
            directory = os.path.dirname(path)
            if directory:
                os.makedirs(directory, exist_ok=True)
            return open(path, "a", encoding="utf-8", errors="backslashreplace"), True
        except OSError as exc:
            raise OSError(
                exc.errno, f"cannot open access log: {exc.strerror or exc}", path
            ) from exc

    def _count(self, batch: list[str], error: Exception | None) -> None:
        if error is None:
            self.written += len(batch)
            if self._write_failing:
                self._write_failing = False
                log.warning("access log %s: writing again", self.path)
            return
        self.failed += len(batch)
        if not self._write_failing:  # once per failing stretch, not once per batch
            self._write_failing = True
            log.error("access log %s: lines lost: %s", self.path, error)


def _drain(receive: trio.MemoryReceiveChannel[str], batch: list[str]) -> None:
    while True:
        try:
            batch.append(receive.receive_nowait())
        except (trio.WouldBlock, trio.EndOfChannel):
            return


def _write(stream: TextIO, batch: list[str]) -> Exception | None:
    """Write and flush ``batch`` (in a worker thread); the error instead of raising it."""
    if not batch:
        return None
    text = "\n".join(batch) + "\n"
    try:
        try:
            stream.write(text)
        except UnicodeEncodeError:  # a process stream with a narrow encoding
            encoding = stream.encoding or "ascii"
            stream.write(text.encode(encoding, "backslashreplace").decode(encoding))
        stream.flush()
    except (OSError, ValueError) as exc:
        return exc
    return None


def _write_and_close(stream: TextIO, owned: bool, batch: list[str]) -> Exception | None:
    error = _write(stream, batch)
    if owned:
        try:
            stream.close()
        except (OSError, ValueError) as exc:  # the lines were flushed already: only say it
            log.warning("access log %s: close: %s", getattr(stream, "name", "?"), exc)
    return error
