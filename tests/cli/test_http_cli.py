"""The HTTP quick start as a user runs it: ``trio-mesh run conf/http1.yaml`` and curl.

The proxy is the installed ``trio-mesh`` script in a subprocess (``python -m trio_mesh.cli``
when no script sits next to this interpreter); readiness is read from its log lines on stderr,
access log lines from its stdout. Every wait has a deadline and every process is killed in a
finally.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = "conf/http1.yaml"  # relative, run from the checkout's root as the README does
TIMEOUT = 15.0  # only ever reached when something is broken
LISTENING = re.compile(r"listener '(?P<name>[^']+)' listening on 127\.0\.0\.1:(?P<port>\d+)$")
READY = re.compile(r"trio-mesh \S+ ready$")
HEX32 = re.compile(r"[0-9a-f]{32}")
# Go's time.Duration.String() as the access log writes durations.
GO_DURATION = r"(?:0s|\d+(?:\.\d+)?(?:ns|µs|ms|s)|\d+m\d+(?:\.\d+)?s|\d+h\d+m\d+(?:\.\d+)?s)"
# MOSN's default format: %start_time% %request_received_duration%
# %response_received_duration% %bytes_sent% %bytes_received% %protocol% %response_code%
# %duration% %response_flag% %response_code% %upstream_local_address%
# %downstream_local_address% %downstream_remote_address% %upstream_host%
DEFAULT_LINE = re.compile(
    rf"(?P<start_time>\d{{4}}/\d\d/\d\d \d\d:\d\d:\d\d\.\d{{3}}) "
    rf"(?P<request_received_duration>{GO_DURATION}|-) "
    rf"(?P<response_received_duration>{GO_DURATION}|-) "
    r"(?P<bytes_sent>\d+) (?P<bytes_received>\d+) (?P<protocol>\S+) (?P<response_code>\d+) "
    rf"(?P<duration>{GO_DURATION}) (?P<response_flag>\S+) (?P<response_code_again>\d+) "
    r"(?P<upstream_local_address>\S+) (?P<downstream_local_address>\S+) "
    r"(?P<downstream_remote_address>\S+) (?P<upstream_host>\S+)"
)

pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")


def trio_mesh() -> list[str]:
    """The command as the README gives it: the installed ``trio-mesh`` script."""
    script = Path(sys.executable).with_name("trio-mesh")
    return [str(script)] if script.exists() else [sys.executable, "-m", "trio_mesh.cli"]


def port_in_use(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Mesh:
    """``trio-mesh run CONFIG`` with stdout and stderr each read line by line on a thread."""

    def __init__(self, config: str | Path) -> None:
        self.stderr: list[str] = []
        self.stdout: list[str] = []
        self._queues: dict[str, queue.Queue[str | None]] = {
            "stdout": queue.Queue(),
            "stderr": queue.Queue(),
        }
        self.proc = subprocess.Popen(
            [*trio_mesh(), "run", str(config)],
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            encoding="utf-8",
            env={k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"},
        )
        self._readers = [
            threading.Thread(target=self._read, args=(name,), daemon=True) for name in self._queues
        ]
        for reader in self._readers:
            reader.start()

    def _read(self, name: str) -> None:
        stream = getattr(self.proc, name)
        for line in stream:
            self._queues[name].put(line.rstrip("\n"))
        self._queues[name].put(None)

    def _next(self, name: str, deadline: float) -> str | None:
        """The next line of ``name``, ``None`` at its end; fails at the deadline."""
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                pytest.fail(f"no {name} line in time; stderr:\n{self.text}")
            try:
                line = self._queues[name].get(timeout=remaining)
            except queue.Empty:
                continue
            if line is not None:
                getattr(self, name).append(line)
            return line

    def ready(self) -> dict[str, int]:
        """Wait for ``ready`` on stderr; each listener's port by name."""
        deadline = time.monotonic() + TIMEOUT
        ports: dict[str, int] = {}
        while (line := self._next("stderr", deadline)) is not None:
            if m := LISTENING.search(line):
                ports[m["name"]] = int(m["port"])
            elif READY.search(line):
                return ports
        self.proc.wait(TIMEOUT)
        pytest.fail(f"exited ({self.proc.returncode}) before ready:\n{self.text}")

    def stdout_lines(self, count: int) -> list[str]:
        """Wait until stdout has given ``count`` lines (while the proxy runs)."""
        deadline = time.monotonic() + TIMEOUT
        while len(self.stdout) < count:
            if self._next("stdout", deadline) is None:
                break
        return self.stdout

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> int:
        """Send ``sig``, wait for the exit, collect both streams to their end; the exit code."""
        self.proc.send_signal(sig)
        rc = self.proc.wait(TIMEOUT)
        deadline = time.monotonic() + TIMEOUT
        for name in self._queues:
            while self._next(name, deadline) is not None:
                pass
        return rc

    @property
    def text(self) -> str:
        return "\n".join(self.stderr)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(TIMEOUT)
        for reader in self._readers:
            reader.join(TIMEOUT)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


@contextlib.contextmanager
def running(config: str | Path) -> Iterator[Mesh]:
    mesh = Mesh(config)
    try:
        yield mesh
    finally:
        mesh.kill()


class Response:
    def __init__(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def header(self, name: str) -> str | None:
        values = [v for n, v in self.headers if n == name]
        assert len(values) <= 1, f"{name} {len(values)} times: {self.headers}"
        return values[0] if values else None

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.headers} {self.body!r}>"


def curl(url: str, *args: str) -> Response:
    result = subprocess.run(
        ["curl", "-sS", "-i", "--max-time", "10", *args, url],
        capture_output=True,
        timeout=TIMEOUT,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    head, sep, body = result.stdout.partition(b"\r\n\r\n")
    assert sep, result.stdout
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = []
    for line in lines:
        name, _, value = line.partition(":")
        headers.append((name.strip().lower(), value.strip()))
    return Response(int(status_line.split()[1]), headers, body)


# --- the README quick start -------------------------------------------------------------


def test_validate_http1_example():
    result = subprocess.run(
        [*trio_mesh(), "validate", EXAMPLE],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{EXAMPLE}: valid: 2 listener(s), 1 cluster(s), 0 warning(s)\n"
    assert result.stderr == ""


def test_quick_start_http1_example_with_curl():
    busy = [port for port in (8080, 8081) if port_in_use(port)]
    if busy:
        pytest.skip(f"conf/http1.yaml needs 127.0.0.1:8080 and :8081; in use: {busy}")
    with running(EXAMPLE) as mesh:
        assert mesh.ready() == {"ingress": 8080, "backend": 8081}, mesh.text

        root = curl("http://127.0.0.1:8080/")
        assert (root.status, root.body) == (200, b"trio-mesh is running\n"), root

        hello = curl("http://127.0.0.1:8080/api/hello")
        assert (hello.status, hello.body) == (200, b"hello from the backend\n"), hello
        assert hello.header("x-served-by") == "trio-mesh"
        assert hello.header("content-length") == str(len(hello.body))

        old = curl("http://127.0.0.1:8080/old")
        assert old.status == 301, old
        location = old.header("location")
        assert location in ("/api/hello", "http://127.0.0.1:8080/api/hello"), old

        missing = curl("http://127.0.0.1:8080/api/missing")
        assert (missing.status, missing.body) == (404, b"no such thing\n"), missing
        assert missing.header("x-served-by") == "trio-mesh"

        # One access log line per request on stdout, while the proxy runs, in MOSN's default
        # format. Only the ingress listener has a log: the backend hop is not logged.
        lines = mesh.stdout_lines(4)
        assert len(lines) == 4, lines
        fields = []
        for line in lines:
            m = DEFAULT_LINE.fullmatch(line)
            assert m, f"not MOSN's default format: {line!r}"
            fields.append(m.groupdict())
        assert [f["response_code"] for f in fields] == ["200", "200", "301", "404"]
        for f in fields:
            assert f["response_code_again"] == f["response_code"]
            assert f["protocol"] == "HTTP/1.1"
            assert f["response_flag"] == "-"
            assert f["downstream_local_address"] == "127.0.0.1:8080"
            assert re.fullmatch(r"127\.0\.0\.1:\d+", f["downstream_remote_address"])
            assert f["bytes_received"] == "0"
        # Proxied requests name the upstream host and count the body they passed on; the
        # ingress's own replies (direct response, redirect) have no upstream host.
        assert [f["upstream_host"] for f in fields] == [
            "-",
            "127.0.0.1:8081",
            "-",
            "127.0.0.1:8081",
        ]
        assert [f["bytes_sent"] for f in fields][1::2] == ["23", "14"]
        assert fields[1]["response_received_duration"] != "-"

        assert mesh.stop() == 0, mesh.text
        assert any("SIGTERM received, draining" in line for line in mesh.stderr), mesh.text
        assert "Traceback" not in mesh.text
        assert len(mesh.stdout) == 4, mesh.stdout
    assert not port_in_use(8080) and not port_in_use(8081)


# --- a JSON access log to a file --------------------------------------------------------


def json_log_config(tmp_path: Path, backend_port: int) -> tuple[Path, Path]:
    """conf/http1.yaml with the ingress on port 0, the backend on ``backend_port``, and the
    ingress's access log as JSON lines in a file."""
    doc = yaml.safe_load((ROOT / EXAMPLE).read_text(encoding="utf-8"))
    log_path = tmp_path / "logs" / "access.json"  # the directory is created by the proxy
    ingress, backend = doc["servers"][0]["listeners"]
    ingress["address"] = "127.0.0.1:0"
    ingress["access_logs"] = [{"log_path": str(log_path), "log_format": "json"}]
    backend["address"] = f"127.0.0.1:{backend_port}"
    doc["cluster_manager"]["clusters"][0]["hosts"] = [{"address": f"127.0.0.1:{backend_port}"}]
    path = tmp_path / "json-log.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return path, log_path


REQUESTS = [
    # (path, extra curl arguments, expected status, proxied)
    ("/", (), 200, False),
    ("/api/hello", (), 200, True),
    ("/old", (), 301, False),
    ("/api/missing", (), 404, True),
    ("/api/hello", ("-H", "x-request-id: my-id-42"), 200, True),
    ("/api/hello", ("--data-binary", "twelve bytes"), 200, True),
]


@pytest.fixture(scope="module")
def json_log_run(tmp_path_factory):
    """The example with a JSON access log, run once: the requests above, then SIGTERM.
    Returns (exit code, stderr text, backend port, responses, log entries)."""
    tmp_path = tmp_path_factory.mktemp("json-log")
    backend = free_port()
    config, log_path = json_log_config(tmp_path, backend)
    with running(config) as mesh:
        ports = mesh.ready()
        assert ports.get("backend") == backend, mesh.text
        ingress = ports["ingress"]
        responses = [
            curl(f"http://127.0.0.1:{ingress}{path}", *args) for path, args, *_ in REQUESTS
        ]
        rc = mesh.stop()
        text = mesh.text
    lines = log_path.read_text(encoding="utf-8").splitlines()
    entries = []
    for line in lines:
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError:
            pytest.fail(f"access log line is not JSON: {line!r}")
    return rc, text, backend, responses, entries


def test_json_access_log_to_file(json_log_run):
    rc, text, backend, responses, entries = json_log_run
    assert rc == 0, text
    assert "Traceback" not in text
    assert [r.status for r in responses] == [status for _, _, status, _ in REQUESTS]
    assert len(entries) == len(REQUESTS), entries
    for entry, (path, _, status, proxied) in zip(entries, REQUESTS, strict=True):
        for key in ("response_code", "upstream_host", "request_id", "duration"):
            assert key in entry, entry
        assert entry["response_code"] == status
        assert entry["path"] == path
        assert entry["protocol"] == "HTTP/1.1"
        assert isinstance(entry["duration"], float) and 0 < entry["duration"] < TIMEOUT
        if proxied:
            assert entry["upstream_host"] == f"127.0.0.1:{backend}"
            assert entry["upstream_cluster"] == "backend"
            assert entry["request_id"] is not None
            assert entry["response_received_duration"] is not None
        else:
            assert entry["upstream_host"] is None
    # A request id the client sent is kept; otherwise the proxy made one.
    ids = [e["request_id"] for e, (*_, proxied) in zip(entries, REQUESTS, strict=True) if proxied]
    assert ids[2] == "my-id-42"
    assert all(HEX32.fullmatch(i) for i in ids[:2] + ids[3:]), ids
    assert len(set(ids)) == len(ids)
    # Bodies counted both ways.
    assert [e["bytes_sent"] for e in entries][1::2] == [23, 14, 23]
    assert entries[5]["method"] == "POST"
    assert entries[5]["bytes_received"] == len("twelve bytes")
    assert entries[5]["request_received_duration"] is not None


def test_json_access_log_records_user_agent(json_log_run):
    *_, entries = json_log_run
    for entry in entries:
        assert entry["user_agent"] is not None and entry["user_agent"].startswith("curl/"), entry


def test_json_access_log_request_received_duration_of_bodyless_proxied_request(json_log_run):
    *_, entries = json_log_run
    proxied = [e for e, (*_, p) in zip(entries, REQUESTS, strict=True) if p]
    for entry in proxied:
        assert entry["request_received_duration"] is not None, entry
        assert entry["request_received_duration"] <= entry["duration"]


def test_json_access_log_counts_direct_response_body(json_log_run):
    *_, responses, entries = json_log_run
    assert responses[0].body == b"trio-mesh is running\n"
    assert entries[0]["bytes_sent"] == len(responses[0].body)
