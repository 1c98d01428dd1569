"""HTTP/1.1 proxy with large bodies: byte-exact, streamed, with bounded memory.

The proxy runs as a real subprocess (``python -m trio_mesh.cli run``) so that its memory can be
read from ``/proc/PID/status``; the h11 upstream (``tests/upstream.py``) and the clients run in
the test's own Trio loop. Neither side ever holds a whole body: downloads are compared with the
upstream's pattern piece by piece and hashed as they arrive, uploads are generated and hashed in
64 KiB pieces.

Memory: the proxy's idle RSS is read after start-up and warm-up requests, its peak
(``VmHWM``) is reset there when the kernel allows it, and after the transfer the peak may exceed
the idle RSS by at most ``MAX_GROWTH``. A proxy that buffered a 100 MB body would need at least
100 MB more, so the bound proves streaming with a wide margin either way.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import re
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
import trio
import yaml

from tests.upstream import Upstream, pattern_bytes

pytestmark = pytest.mark.skipif(
    not Path("/proc/self/status").exists(), reason="needs Linux /proc to read the proxy's memory"
)

MB = 1 << 20
PIECE = 64 * 1024
BIG = 100 * MB  # 104857600
SLOW_SIZE = 50 * MB
#: Peak RSS over idle RSS allowed during a 100 MB transfer (buffering it would need 100 MB).
MAX_GROWTH = 40 * MB
#: RSS growth allowed while a client is not reading ("a few MB").
MAX_STALL_GROWTH = 4 * MB
#: Deadline of one 100 MB transfer (about half a second on loopback; only hit when broken).
TRANSFER_TIMEOUT = 120.0
START_TIMEOUT = 15.0

CLI = [sys.executable, "-m", "trio_mesh.cli", "run"]
LISTENING = re.compile(r"listener '(?P<name>[^']+)' listening on 127\.0\.0\.1:(?P<port>\d+)$")
READY = re.compile(r"trio-mesh \S+ ready$")

#: What /bytes/N sends has period 64 KiB; two periods hold every slice of up to 64 KiB.
_WINDOW = pattern_bytes(2 * PIECE)


def _pattern_sha256(n: int) -> str:
    """sha256 of pattern_bytes(n), without building it."""
    digest = hashlib.sha256()
    whole, rest = divmod(n, PIECE)
    block = _WINDOW[:PIECE]
    for _ in range(whole):
        digest.update(block)
    digest.update(block[:rest])
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------
# The proxy process and its memory


def _status(pid: int) -> dict[str, int]:
    """``VmRSS``, ``VmHWM``... of ``pid`` in bytes."""
    values = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            name, _, rest = line.partition(":")
            if name.startswith("Vm") and rest.strip().endswith("kB"):
                values[name] = int(rest.split()[0]) * 1024
    return values


def _reset_peak(pid: int) -> bool:
    """Reset ``VmHWM`` to the current RSS (``clear_refs`` 5, Linux 4.0+); False if refused."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


def _fmt(n: float) -> str:
    return f"{n / MB:.1f} MiB"


class MeshProcess:
    """``trio-mesh run CONFIG`` in a subprocess; stderr drained into ``lines`` all along."""

    def __init__(self, proc: trio.Process) -> None:
        self.proc = proc
        self.pid = proc.pid
        self.lines: list[str] = []
        self.ports: dict[str, int] = {}
        self.ready = trio.Event()
        self.idle_rss = 0
        self.peak_reset = False

    async def drain_stderr(self) -> None:
        stderr = self.proc.stderr
        assert stderr is not None
        pending = b""
        async with stderr:  # closed at EOF, when the process is gone
            while data := await stderr.receive_some(65536):
                pending += data
                *lines, pending = pending.split(b"\n")
                for raw in lines:
                    line = raw.decode("utf-8", "replace")
                    self.lines.append(line)
                    if m := LISTENING.search(line):
                        self.ports[m["name"]] = int(m["port"])
                    elif READY.search(line):
                        self.ready.set()
        if pending:
            self.lines.append(pending.decode("utf-8", "replace"))

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    def status(self) -> dict[str, int]:
        return _status(self.pid)

    def rss(self) -> int:
        return self.status()["VmRSS"]

    def mark_idle(self) -> None:
        """Take the idle RSS as the baseline and restart the peak from it."""
        self.idle_rss = self.rss()
        self.peak_reset = _reset_peak(self.pid)

    def growth(self) -> int:
        """Peak RSS since ``mark_idle`` over the idle RSS."""
        return self.status()["VmHWM"] - self.idle_rss

    async def stop(self) -> int:
        """SIGTERM; the exit code (0 expected) once stderr is closed too."""
        self.proc.send_signal(signal.SIGTERM)
        with trio.fail_after(START_TIMEOUT):
            return await self.proc.wait()


def _config(tmp_path: Path, upstream_port: int) -> tuple[Path, Path]:
    log_path = tmp_path / "access.json"
    doc = {
        "servers": [
            {
                "default_log_level": "INFO",
                "listeners": [
                    {
                        "name": "ingress",
                        "address": "127.0.0.1:0",
                        "access_logs": [{"log_path": str(log_path), "log_format": "json"}],
                        "filter_chains": [
                            {
                                "filters": [
                                    {
                                        "type": "proxy",
                                        "config": {
                                            "downstream_protocol": "Http1",
                                            "upstream_protocol": "Http1",
                                            "router_config_name": "routes",
                                        },
                                    }
                                ]
                            }
                        ],
                    }
                ],
                "routers": [
                    {
                        "router_config_name": "routes",
                        "virtual_hosts": [
                            {
                                "name": "all",
                                "domains": ["*"],
                                "routers": [
                                    {
                                        "match": {"prefix": "/"},
                                        "route": {"cluster_name": "up", "timeout": "120s"},
                                    }
                                ],
                            }
                        ],
                    }
                ],
            }
        ],
        "cluster_manager": {
            "clusters": [
                {
                    "name": "up",
                    "connect_timeout": "2s",
                    "hosts": [{"address": f"127.0.0.1:{upstream_port}"}],
                }
            ]
        },
    }
    path = tmp_path / "mesh.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return path, log_path


async def start_mesh(nursery: trio.Nursery, tmp_path: Path, upstream_port: int) -> MeshProcess:
    config, _ = _config(tmp_path, upstream_port)
    env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
    proc = await trio.lowlevel.open_process(
        [*CLI, str(config)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
    )
    mesh = MeshProcess(proc)
    nursery.start_soon(mesh.drain_stderr)
    with trio.move_on_after(START_TIMEOUT):
        async with trio.open_nursery() as race:

            async def exited() -> None:
                await proc.wait()
                race.cancel_scope.cancel()

            async def ready() -> None:
                await mesh.ready.wait()
                race.cancel_scope.cancel()

            race.start_soon(exited)
            race.start_soon(ready)
    if not mesh.ready.is_set():
        proc.kill()
        pytest.fail(f"proxy not ready (exit code {proc.poll()}):\n{mesh.text}")
    assert "ingress" in mesh.ports, mesh.text
    return mesh


def _logged(tmp_path: Path, path: str) -> dict:
    """The one access log entry (JSON lines) of the request for ``path``."""
    text = (tmp_path / "access.json").read_text(encoding="utf-8")
    entries = [e for e in map(json.loads, text.splitlines()) if e["path"] == path]
    assert len(entries) == 1, text
    return entries[0]


@pytest.fixture
async def upstream(nursery: trio.Nursery) -> Upstream:
    up = Upstream()
    await up.start(nursery)
    return up


async def _warm_up(port: int) -> None:
    """Every code path a transfer takes (both body framings, both directions), so that the
    idle baseline is the proxy's steady state, not its cold start."""
    async with await HttpClient.connect(port) as client:
        for _ in range(3):
            await client.send_request("GET", "/bytes/300000")
            status, _ = await client.read_head()
            assert status == 200
            await client.read_body(300000, PatternChecker().feed)
            await client.send_request("POST", "/echo/warm", body_length=200000)
            await client.stream.send_all(b"x" * 200000)
            status, headers = await client.read_head()
            assert status == 200
            await client.read_json(headers)
            await client.send_request("POST", "/echo/warm", chunked=True)
            await client.stream.send_all(b"4\r\nwarm\r\n0\r\n\r\n")
            status, headers = await client.read_head()
            assert status == 200
            await client.read_json(headers)


@contextlib.asynccontextmanager
async def running_mesh(
    nursery: trio.Nursery, tmp_path: Path, upstream_port: int
) -> AsyncIterator[MeshProcess]:
    """A started, warmed-up proxy with its idle RSS taken; killed at the end if still up."""
    mesh = await start_mesh(nursery, tmp_path, upstream_port)
    try:
        await _warm_up(mesh.ports["ingress"])
        await trio.sleep(0.2)
        mesh.mark_idle()
        yield mesh
    finally:
        with trio.move_on_after(START_TIMEOUT, shield=True):
            if mesh.proc.poll() is None:
                mesh.proc.kill()
            await mesh.proc.wait()


@pytest.fixture
async def mesh(nursery: trio.Nursery, tmp_path: Path, upstream: Upstream) -> AsyncIterator:
    async with running_mesh(nursery, tmp_path, upstream.port) as proc:
        yield proc


# ---------------------------------------------------------------------------------------------
# A small HTTP/1.1 client


class HttpClient:
    """Requests on one keep-alive connection; bodies are handed over piece by piece."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buf = bytearray()

    @classmethod
    async def connect(cls, port: int, *, rcvbuf: int | None = None) -> HttpClient:
        sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_STREAM)
        if rcvbuf is not None:  # fixed before connecting: no receive window autotuning
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        await sock.connect(("127.0.0.1", port))
        return cls(trio.SocketStream(sock))

    async def __aenter__(self) -> HttpClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stream.aclose()

    async def send_request(
        self, method: str, target: str, *, body_length: int | None = None, chunked: bool = False
    ) -> None:
        head = f"{method} {target} HTTP/1.1\r\nhost: test\r\n"
        if body_length is not None:
            head += f"content-length: {body_length}\r\n"
        if chunked:
            head += "transfer-encoding: chunked\r\n"
        await self.stream.send_all(head.encode() + b"\r\n")

    async def _more(self) -> None:
        data = await self.stream.receive_some(PIECE)
        if not data:
            raise EOFError(f"connection closed; {len(self.buf)} bytes unparsed")
        self.buf += data

    async def read_head(self) -> tuple[int, dict[str, str]]:
        while (end := self.buf.find(b"\r\n\r\n")) < 0:
            await self._more()
        lines = bytes(self.buf[:end]).decode("latin-1").split("\r\n")
        del self.buf[: end + 4]
        status = int(lines[0].split(" ", 2)[1])
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        return status, headers

    async def read_body(self, length: int, sink: Callable[[bytes], None]) -> None:
        """A Content-Length body of ``length`` bytes, each piece to ``sink`` as it comes."""
        left = length
        if self.buf:
            piece = bytes(self.buf[:left])
            del self.buf[: len(piece)]
            left -= len(piece)
            sink(piece)
        while left > 0:
            data = await self.stream.receive_some(min(left, PIECE))
            if not data:
                raise EOFError(f"connection closed with {left} of {length} body bytes missing")
            left -= len(data)
            sink(data)

    async def read_chunked(self, sink: Callable[[bytes], None]) -> None:
        """A chunked body: each chunk's data to ``sink`` as it comes; trailers skipped."""
        while True:
            size = int((await self._line()).split(b";")[0], 16)
            if size == 0:
                while await self._line():
                    pass
                return
            await self.read_body(size, sink)
            if await self._line():
                raise ValueError("chunk data longer than its size")

    async def _line(self) -> bytes:
        while (end := self.buf.find(b"\r\n")) < 0:
            await self._more()
        line = bytes(self.buf[:end])
        del self.buf[: end + 2]
        return line

    async def read_json(self, headers: dict[str, str]) -> dict:
        """A small Content-Length JSON body (the /echo answer)."""
        parts: list[bytes] = []
        await self.read_body(int(headers["content-length"]), parts.append)
        return json.loads(b"".join(parts))


class PatternChecker:
    """Compares a download with /bytes/N's pattern as it arrives; hashes it too."""

    def __init__(self) -> None:
        self.offset = 0
        self.first_mismatch: int | None = None
        self.sha256 = hashlib.sha256()

    def feed(self, data: bytes) -> None:
        self.sha256.update(data)
        view = memoryview(data)
        while view:
            piece, view = view[:PIECE], view[PIECE:]
            start = self.offset % PIECE
            expected = _WINDOW[start : start + len(piece)]
            if self.first_mismatch is None and piece != expected:
                at = next(i for i in range(len(piece)) if piece[i] != expected[i])
                self.first_mismatch = self.offset + at
            self.offset += len(piece)


def _upload_pieces(n: int, seed: int) -> Iterator[bytes]:
    """``n`` bytes in 64 KiB pieces, each different (its index in front of a random block)."""
    base = random.Random(seed).randbytes(PIECE)
    index = 0
    while n > 0:
        piece = (struct.pack(">Q", index) + base[8:])[: min(n, PIECE)]
        yield piece
        n -= len(piece)
        index += 1


def _report(name: str, mesh: MeshProcess, size: int, seconds: float) -> None:
    st = mesh.status()
    print(
        f"\n{name}: {_fmt(size)} in {seconds:.2f}s ({size / MB / seconds:.0f} MiB/s); proxy "
        f"idle RSS {_fmt(mesh.idle_rss)}, peak {_fmt(st['VmHWM'])} "
        f"(+{_fmt(st['VmHWM'] - mesh.idle_rss)}, peak reset: {mesh.peak_reset}), "
        f"RSS now {_fmt(st['VmRSS'])}"
    )


# ---------------------------------------------------------------------------------------------
# The tests


async def test_download_100mb_streams_with_bounded_memory(mesh, upstream, tmp_path):
    checker = PatternChecker()
    with trio.fail_after(TRANSFER_TIMEOUT):
        started = time.perf_counter()
        async with await HttpClient.connect(mesh.ports["ingress"]) as client:
            await client.send_request("GET", f"/bytes/{BIG}")
            status, headers = await client.read_head()
            assert status == 200
            assert headers["content-length"] == str(BIG)
            assert "transfer-encoding" not in headers
            await client.read_body(BIG, checker.feed)
            seconds = time.perf_counter() - started
            # The body ended exactly where its length said: the connection goes on.
            await client.send_request("GET", "/bytes/1000")
            status, headers = await client.read_head()
            assert (status, headers["content-length"]) == (200, "1000")
            small = PatternChecker()
            await client.read_body(1000, small.feed)
            assert small.first_mismatch is None
    _report("download", mesh, BIG, seconds)

    assert checker.offset == BIG
    assert checker.first_mismatch is None, f"first wrong byte at offset {checker.first_mismatch}"
    assert checker.sha256.hexdigest() == _pattern_sha256(BIG)
    growth = mesh.growth()
    assert growth < MAX_GROWTH, f"proxy RSS grew {_fmt(growth)} over idle during 100 MB"

    assert await mesh.stop() == 0, mesh.text
    assert "Traceback" not in mesh.text
    entry = _logged(tmp_path, f"/bytes/{BIG}")
    assert (entry["method"], entry["response_code"]) == ("GET", 200)
    assert entry["bytes_sent"] == BIG
    assert entry["response_flag"] is None


@pytest.mark.parametrize("kind", ["chunked", "close-delimited"])
async def test_download_100mb_without_length_streams_rechunked(mesh, upstream, tmp_path, kind):
    """An upstream body without Content-Length (chunked, or ended by the close) goes to an
    HTTP/1.1 client re-chunked, streamed like any other."""
    checker = PatternChecker()
    with trio.fail_after(TRANSFER_TIMEOUT):
        started = time.perf_counter()
        async with await HttpClient.connect(mesh.ports["ingress"]) as client:
            await client.send_request("GET", f"/{kind}/{BIG}")
            status, headers = await client.read_head()
            assert status == 200
            assert headers.get("transfer-encoding") == "chunked"
            assert "content-length" not in headers
            await client.read_chunked(checker.feed)
            seconds = time.perf_counter() - started
            # The last chunk closed the message: the client connection goes on.
            await client.send_request("GET", "/bytes/10")
            status, headers = await client.read_head()
            assert (status, headers["content-length"]) == (200, "10")
            await client.read_body(10, lambda data: None)
    _report(f"download ({kind} upstream)", mesh, BIG, seconds)

    assert checker.offset == BIG
    assert checker.first_mismatch is None, f"first wrong byte at offset {checker.first_mismatch}"
    assert checker.sha256.hexdigest() == _pattern_sha256(BIG)
    growth = mesh.growth()
    assert growth < MAX_GROWTH, f"proxy RSS grew {_fmt(growth)} over idle during 100 MB"

    assert await mesh.stop() == 0, mesh.text
    entry = _logged(tmp_path, f"/{kind}/{BIG}")
    assert (entry["response_code"], entry["bytes_sent"]) == (200, BIG)


async def _upload(mesh: MeshProcess, *, chunked: bool) -> tuple[dict, str, float]:
    """POST /echo with a 100 MB body, sent while the response is read; returns the echo, the
    sha256 sent, and the seconds taken."""
    sent = hashlib.sha256()
    sent_bytes = 0
    with trio.fail_after(TRANSFER_TIMEOUT):
        started = time.perf_counter()
        async with await HttpClient.connect(mesh.ports["ingress"]) as client:
            if chunked:
                await client.send_request("POST", "/echo", chunked=True)
            else:
                await client.send_request("POST", "/echo", body_length=BIG)

            async def send_body() -> None:
                nonlocal sent_bytes
                for piece in _upload_pieces(BIG, seed=7 if chunked else 5):
                    sent.update(piece)
                    sent_bytes += len(piece)
                    if chunked:
                        await client.stream.send_all(b"%x\r\n%b\r\n" % (len(piece), piece))
                    else:
                        await client.stream.send_all(piece)
                if chunked:
                    await client.stream.send_all(b"0\r\n\r\n")

            async with trio.open_nursery() as nursery:
                nursery.start_soon(send_body)
                # Read concurrently: an early answer is seen rather than a send that blocks.
                status, headers = await client.read_head()
                echo = await client.read_json(headers)
                assert sent_bytes == BIG, (
                    f"answered {status} after {sent_bytes} of {BIG} bytes: {echo}"
                )
        seconds = time.perf_counter() - started
    assert status == 200, echo
    assert headers["content-type"] == "application/json"
    return echo, sent.hexdigest(), seconds


async def test_upload_100mb_content_length_streams_with_bounded_memory(mesh, upstream, tmp_path):
    echo, sha, seconds = await _upload(mesh, chunked=False)
    _report("upload (content-length)", mesh, BIG, seconds)

    assert echo["method"] == "POST"
    assert echo["body_length"] == BIG
    assert echo["body_sha256"] == sha
    names = {name.lower(): value for name, value in echo["headers"]}
    assert names["content-length"] == str(BIG)
    assert "transfer-encoding" not in names
    growth = mesh.growth()
    assert growth < MAX_GROWTH, f"proxy RSS grew {_fmt(growth)} over idle during 100 MB"

    assert await mesh.stop() == 0, mesh.text
    entry = _logged(tmp_path, "/echo")
    assert (entry["method"], entry["response_code"], entry["bytes_received"]) == ("POST", 200, BIG)


async def test_upload_100mb_chunked_streams_with_bounded_memory(mesh, upstream, tmp_path):
    echo, sha, seconds = await _upload(mesh, chunked=True)
    _report("upload (chunked)", mesh, BIG, seconds)

    assert echo["body_length"] == BIG
    assert echo["body_sha256"] == sha
    names = {name.lower(): value for name, value in echo["headers"]}
    assert names["transfer-encoding"] == "chunked"
    assert "content-length" not in names
    growth = mesh.growth()
    assert growth < MAX_GROWTH, f"proxy RSS grew {_fmt(growth)} over idle during 100 MB"

    assert await mesh.stop() == 0, mesh.text
    entry = _logged(tmp_path, "/echo")
    assert (entry["method"], entry["response_code"], entry["bytes_received"]) == ("POST", 200, BIG)


class _CountingStream:
    """An upstream connection's stream that counts the bytes the upstream managed to send."""

    def __init__(self, stream: trio.SocketStream, counter: list[int]) -> None:
        self._stream = stream
        self._counter = counter
        self.socket = stream.socket

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        return await self._stream.receive_some(max_bytes)

    async def send_all(self, data: bytes) -> None:
        await self._stream.send_all(data)
        self._counter[0] += len(data)


class CountingUpstream(Upstream):
    """The h11 upstream, counting what it sends: the proof that backpressure reaches it."""

    def __init__(self) -> None:
        super().__init__()
        self.sent = [0]

    async def _serve(self, stream: trio.SocketStream) -> None:
        await super()._serve(_CountingStream(stream, self.sent))  # type: ignore[arg-type]


@pytest.fixture
async def counting_upstream(nursery: trio.Nursery) -> CountingUpstream:
    up = CountingUpstream()
    await up.start(nursery)
    return up


@pytest.fixture
async def counted_mesh(
    nursery: trio.Nursery, tmp_path: Path, counting_upstream: CountingUpstream
) -> AsyncIterator:
    async with running_mesh(nursery, tmp_path, counting_upstream.port) as proc:
        yield proc


async def test_slow_reader_backpressure_holds_proxy_memory(
    counted_mesh, counting_upstream, tmp_path
):
    """A client that stops reading mid-download: the proxy stops reading the upstream (which
    stops sending) instead of buffering the rest, then the download completes intact."""
    mesh, upstream = counted_mesh, counting_upstream
    checker = PatternChecker()
    first = 4 * MB
    with trio.fail_after(TRANSFER_TIMEOUT):
        started = time.perf_counter()
        # A small fixed receive buffer: the client's kernel cannot soak up the stall.
        client = await HttpClient.connect(mesh.ports["ingress"], rcvbuf=256 * 1024)
        async with client:
            sent_before = upstream.sent[0]
            await client.send_request("GET", f"/bytes/{SLOW_SIZE}")
            status, headers = await client.read_head()
            assert status == 200
            assert headers["content-length"] == str(SLOW_SIZE)
            await client.read_body(first, checker.feed)
            read_at_stall = checker.offset

            # Stop reading. Let the socket buffers fill, then watch the proxy.
            await trio.sleep(1.0)
            stall_rss = mesh.rss()
            sent_at_stall = upstream.sent[0] - sent_before
            samples = []
            for _ in range(6):
                await trio.sleep(0.5)
                samples.append(mesh.rss())
            sent_after = upstream.sent[0] - sent_before

            # Then read the rest.
            await client.read_body(SLOW_SIZE - first, checker.feed)
        seconds = time.perf_counter() - started
    _report("slow reader", mesh, SLOW_SIZE, seconds)
    print(
        f"stalled after {_fmt(read_at_stall)} read: RSS {_fmt(stall_rss)} then "
        f"{', '.join(_fmt(s) for s in samples)}; the upstream had sent "
        f"{_fmt(sent_at_stall)} -> {_fmt(sent_after)}"
    )

    assert checker.offset == SLOW_SIZE
    assert checker.first_mismatch is None, f"first wrong byte at {checker.first_mismatch}"
    assert checker.sha256.hexdigest() == _pattern_sha256(SLOW_SIZE)
    # While the client did not read, the proxy did not keep reading into its memory...
    growth = max(samples) - stall_rss
    assert growth < MAX_STALL_GROWTH, f"RSS grew {_fmt(growth)} while the client stalled"
    assert max(samples) - mesh.idle_rss < 2 * MAX_STALL_GROWTH, (
        f"RSS {_fmt(max(samples))} while stalled, idle {_fmt(mesh.idle_rss)}"
    )
    # ...and the upstream was held back: it stopped sending, far from the end.
    assert sent_after == sent_at_stall, "the upstream kept sending while the client stalled"
    assert sent_after < SLOW_SIZE - 8 * MB, (
        f"the upstream sent {_fmt(sent_after)} of {_fmt(SLOW_SIZE)} while the client had "
        f"read {_fmt(first)}"
    )
    assert mesh.growth() < MAX_GROWTH

    assert await mesh.stop() == 0, mesh.text
    entry = _logged(tmp_path, f"/bytes/{SLOW_SIZE}")
    assert (entry["response_code"], entry["bytes_sent"]) == (200, SLOW_SIZE)
