"""Access log: MOSN variables, JSON lines, and the writer task against real files and stdout."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import time

import pytest
import trio

from tests.mtls_helpers import mtls_info
from tests.tls_pki import CLIENT_SPIFFE, SERVER_SPIFFE
from trio_mesh.config.logformat import TLS_VARIABLES, validate_log_format
from trio_mesh.config.model import AccessLogConfig
from trio_mesh.proxy.accesslog import (
    DEFAULT_FORMAT,
    VARIABLES,
    AccessLog,
    go_duration,
)
from trio_mesh.proxy.record import RequestRecord

# 2024-03-05 06:07:08.9876 UTC
STAMP = 1709618828.9876


@pytest.fixture
def utc(monkeypatch):
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def full_info(**changes) -> RequestRecord:
    info = RequestRecord(
        start_time=STAMP,
        start=100.0,
        request_received_duration=0.000250,
        response_received_duration=0.001234,
        duration=1.5,
        bytes_received=12,
        bytes_sent=3456,
        protocol="HTTP/1.1",
        method="POST",
        path="/api/v1?x=1",
        authority="example.com",
        response_code=200,
        response_flag="UH,URX",
        upstream_host="10.0.0.1:8080",
        upstream_cluster="backend",
        downstream_remote_address="192.168.1.9:51000",
        downstream_local_address="127.0.0.1:2045",
        request_id="req-1",
        user_agent="curl/8.0",
        route_name="api",
        rpc_service="com.example.Echo:1.0",
        rpc_method="echo",
    )
    for name, value in changes.items():
        setattr(info, name, value)
    return info


def access_log(path, log_format=None, **kwargs) -> AccessLog:
    return AccessLog(AccessLogConfig(log_path=str(path), log_format=log_format), **kwargs)


async def wait_written(log: AccessLog, count: int) -> None:
    """Wait until the writer has handled ``count`` lines (the writer works in a thread)."""
    with trio.fail_after(10):
        while log.written + log.failed < count:
            await trio.sleep(0.001)


# ---------------------------------------------------------------- formats


def test_default_format_is_mosn_and_fields_are_in_order(utc):
    line = access_log("stdout").format(full_info())
    assert line == (
        "2024/03/05 06:07:08.987 250µs 1.234ms 3456 12 HTTP/1.1 200 1.5s UH,URX 200 - "
        "127.0.0.1:2045 192.168.1.9:51000 10.0.0.1:8080"
    )
    assert access_log("stdout", log_format="").format(full_info()) == line
    assert access_log("stdout", log_format=DEFAULT_FORMAT).format(full_info()) == line


def test_start_time_is_local_time_with_truncated_milliseconds(utc):
    log = access_log("stdout", log_format="%start_time%")
    assert log.format(full_info(start_time=STAMP)) == "2024/03/05 06:07:08.987"
    assert log.format(full_info(start_time=STAMP + 1.0126)) == "2024/03/05 06:07:10.000"
    assert log.format(full_info(start_time=1709618828.0)) == "2024/03/05 06:07:08.000"


def test_start_time_follows_the_local_zone(monkeypatch):
    monkeypatch.setenv("TZ", "Asia/Shanghai")
    time.tzset()
    try:
        log = access_log("stdout", log_format="%start_time%")
        assert log.format(full_info()) == "2024/03/05 14:07:08.987"
    finally:
        monkeypatch.undo()
        time.tzset()


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (850e-9, "850ns"),
        (1e-6, "1µs"),
        (1.5e-6, "1.5µs"),
        (0.001, "1ms"),
        (0.001234, "1.234ms"),
        (0.0012345678, "1.234568ms"),  # to the nearest nanosecond, Go's resolution
        (0.5, "500ms"),
        (1, "1s"),
        (2.5, "2.5s"),
        (90, "1m30s"),
        (3600, "1h0m0s"),
        (3661.001, "1h1m1.001s"),
        (-0.0015, "-1.5ms"),
    ],
)
def test_durations_render_as_go_time_duration(seconds, text):
    assert go_duration(seconds) == text


def test_custom_template_with_literals_aliases_and_placeholders():
    log = access_log(
        "stdout",
        log_format=(
            '{%method%} "%path%" %authority% 100%% %response_code% [%response_flags%] '
            "%upstream_cluster% %request_id% %user_agent% %upstream_local_address% 50% done"
        ),
    )
    assert log.format(full_info()) == (
        '{POST} "/api/v1?x=1" example.com 100% 200 [UH,URX] backend req-1 curl/8.0 - 50% done'
    )
    assert access_log("stdout", log_format="%method%%path%").format(full_info()) == (
        "POST/api/v1?x=1"
    )
    assert access_log("stdout", log_format="no variables").format(full_info()) == "no variables"


def test_missing_values_render_as_dash():
    assert access_log("stdout").format(RequestRecord()) == "- - - 0 0 - 0 - - 0 - - - -"
    everything = " ".join(f"%{name}%" for name in VARIABLES)
    line = access_log("stdout", log_format=everything).format(RequestRecord())
    assert line.split(" ") == ["-", "-", "-", "-", "0", "0", "-", "0", *["-"] * 27]


def test_request_text_cannot_break_the_line():
    log = access_log("stdout", log_format="%path% %user_agent%")
    info = full_info(path="/a\nb\r\x00\udcff", user_agent="x\ty\x7f")
    assert log.format(info) == "/a\\x0ab\\x0d\\x00\\udcff x\\x09y\\x7f"
    assert access_log("stdout", log_format="%path%").format(full_info(path="/é")) == "/é"


def test_json_lines_carry_every_variable(utc):
    log = access_log("stdout", log_format="json")
    line = log.format(full_info(path="/a\nb"))
    assert "\n" not in line
    record = json.loads(line)
    assert list(record) == list(VARIABLES)
    assert record == {
        "start_time": "2024/03/05 06:07:08.987",
        "request_received_duration": 0.00025,
        "response_received_duration": 0.001234,
        "duration": 1.5,
        "bytes_sent": 3456,
        "bytes_received": 12,
        "protocol": "HTTP/1.1",
        "response_code": 200,
        "response_flag": "UH,URX",
        "upstream_host": "10.0.0.1:8080",
        "upstream_cluster": "backend",
        "downstream_local_address": "127.0.0.1:2045",
        "downstream_remote_address": "192.168.1.9:51000",
        "request_id": "req-1",
        "method": "POST",
        "path": "/a\nb",
        "authority": "example.com",
        "user_agent": "curl/8.0",
        "route_name": "api",
        "upstream_transport_failure_reason": None,
        "x-mosn-rpc-service": "com.example.Echo:1.0",
        "x-mosn-rpc-method": "echo",
        "TRACE_ID": None,  # tracing off
        "SPAN_ID": None,
        **dict.fromkeys(TLS_VARIABLES),  # a plaintext request: every TLS key, null
    }
    empty = json.loads(log.format(RequestRecord()))
    assert list(empty) == list(VARIABLES)
    assert {name: value for name, value in empty.items() if value is not None} == {
        "bytes_sent": 0,
        "bytes_received": 0,
        "response_code": 0,
    }


TLS_FORMAT = (
    "%REQUESTED_SERVER_NAME% %DOWNSTREAM_TLS_VERSION% %DOWNSTREAM_TLS_CIPHER%"
    " [%DOWNSTREAM_PEER_SUBJECT%] [%DOWNSTREAM_PEER_ISSUER%] %DOWNSTREAM_PEER_URI_SAN%"
    " %DOWNSTREAM_PEER_DNS_SAN% %DOWNSTREAM_PEER_SERIAL% %DOWNSTREAM_PEER_FINGERPRINT_256%"
    " [%DOWNSTREAM_LOCAL_SUBJECT%] %DOWNSTREAM_LOCAL_URI_SAN%"
)


def test_tls_variables_are_envoys():
    tls = mtls_info(
        peer_dns_sans=("a.example", "b.example"),
        peer_uri_sans=(CLIENT_SPIFFE, "spiffe://x/y"),
        peer_cert_der=b"der",
    )
    line = access_log("stdout", log_format=TLS_FORMAT).format(full_info(tls=tls))
    assert line == (
        "localhost TLSv1.3 TLS_AES_128_GCM_SHA256 [CN=client,O=trio-mesh tests]"
        f" [CN=ca,O=trio-mesh tests] {CLIENT_SPIFFE},spiffe://x/y a.example,b.example 03e9"
        f" {hashlib.sha256(b'der').hexdigest()} [CN=localhost,O=trio-mesh tests]"
        f" {SERVER_SPIFFE}"
    )
    # mosn's name of the SNI is the same variable
    assert (
        access_log("stdout", log_format="%requested_server_name%").format(full_info(tls=tls))
        == "localhost"
    )


def test_tls_variables_are_dashes_without_tls_or_without_a_client_certificate():
    log = access_log("stdout", log_format=TLS_FORMAT)
    assert log.format(full_info()) == "- - - [-] [-] - - - - [-] -"
    no_peer = mtls_info(
        sni=None,
        peer_subject=None,
        peer_issuer=None,
        peer_uri_sans=(),
        peer_serial=None,
        peer_cert_der=None,
    )
    assert log.format(full_info(tls=no_peer)) == (
        "- TLSv1.3 TLS_AES_128_GCM_SHA256 [-] [-] - - - - [CN=localhost,O=trio-mesh tests]"
        f" {SERVER_SPIFFE}"
    )


def test_tls_variables_in_json_lines(utc):
    log = access_log("stdout", log_format="json")
    record = json.loads(log.format(full_info(tls=mtls_info(peer_cert_der=b"der"))))
    assert list(record) == list(VARIABLES)
    assert {name: record[name] for name in TLS_VARIABLES} == {
        "requested_server_name": "localhost",
        "DOWNSTREAM_TLS_VERSION": "TLSv1.3",
        "DOWNSTREAM_TLS_CIPHER": "TLS_AES_128_GCM_SHA256",
        "DOWNSTREAM_PEER_SUBJECT": "CN=client,O=trio-mesh tests",
        "DOWNSTREAM_PEER_ISSUER": "CN=ca,O=trio-mesh tests",
        "DOWNSTREAM_PEER_URI_SAN": CLIENT_SPIFFE,
        "DOWNSTREAM_PEER_DNS_SAN": None,
        "DOWNSTREAM_PEER_SERIAL": "03e9",
        "DOWNSTREAM_PEER_FINGERPRINT_256": hashlib.sha256(b"der").hexdigest(),
        "DOWNSTREAM_LOCAL_SUBJECT": "CN=localhost,O=trio-mesh tests",
        "DOWNSTREAM_LOCAL_URI_SAN": SERVER_SPIFFE,
    }


def test_a_certificates_text_cannot_break_the_line():
    tls = mtls_info(peer_subject="CN=a\nb\r\n", peer_uri_sans=("spiffe://x/\x00",))
    line = access_log("stdout", log_format=TLS_FORMAT).format(full_info(tls=tls))
    assert "\n" not in line and "\r" not in line and "\x00" not in line
    assert "[CN=a\\x0ab\\x0d\\x0a]" in line and "spiffe://x/\\x00" in line


def test_unknown_variable_is_a_config_error_naming_it():
    with pytest.raises(ValueError, match=r"unknown access log variable %bogus% \(known: start"):
        access_log("stdout", log_format="%start_time% %bogus%")
    with pytest.raises(ValueError, match="%StartTime%"):
        validate_log_format("%StartTime%")
    with pytest.raises(ValueError, match=r"request_header_x-id.*header variables"):
        validate_log_format("%request_header_x-id%")
    for fmt in (None, "", "json", DEFAULT_FORMAT, "100%% %method% 50% off", "%response_flags%"):
        validate_log_format(fmt)


def test_request_record_is_slotted_and_flags_join_once():
    info = RequestRecord()
    assert not hasattr(info, "__dict__")
    assert (info.response_code, info.response_flag, info.upstream_host) == (0, "", None)
    info.add_flag("UF")
    info.add_flag("URX")
    info.add_flag("UF")
    assert info.response_flag == "UF,URX"
    assert "response_flag='UF,URX'" in repr(info)


# ---------------------------------------------------------------- the writer


async def test_writer_writes_every_line_in_order(tmp_path, nursery):
    path = tmp_path / "access.log"
    path.write_text("earlier line\n")
    log = access_log(path, log_format="%path%")
    await nursery.start(log.run)
    for n in range(2000):
        log.log(full_info(path=f"/{n}"))
        if n % 7 == 0:
            await trio.sleep(0)  # let the writer take batches while requests keep coming
    await wait_written(log, 2000)
    assert (log.written, log.dropped, log.failed) == (2000, 0, 0)
    lines = path.read_text().splitlines()
    assert lines == ["earlier line", *[f"/{n}" for n in range(2000)]]


async def test_full_queue_drops_and_counts_without_blocking(tmp_path, nursery):
    path = tmp_path / "access.log"
    log = access_log(path, log_format="%path%", max_queued=16)
    await nursery.start(log.run)
    calls = 500
    for n in range(calls):  # no checkpoint: the writer cannot run between these calls
        log.log(full_info(path=f"/{n}"))
    assert log.dropped > 0
    assert log.written == 0
    accepted = calls - log.dropped
    assert accepted <= 17  # the buffer, plus at most one handed straight to the waiting writer
    await wait_written(log, accepted)
    assert log.written + log.dropped == calls
    assert path.read_text().splitlines() == [f"/{n}" for n in range(accepted)]
    log.log(full_info(path="/after"))  # room again
    await wait_written(log, accepted + 1)
    assert path.read_text().splitlines()[-1] == "/after"


async def test_cancellation_writes_what_is_queued_then_closes(tmp_path):
    path = tmp_path / "access.log"
    log = access_log(path, log_format="%path%", max_queued=1000)
    async with trio.open_nursery() as nursery:
        await nursery.start(log.run)
        for n in range(300):
            log.log(full_info(path=f"/{n}"))
        nursery.cancel_scope.cancel()
    assert log.written == 300
    assert path.read_text().splitlines() == [f"/{n}" for n in range(300)]
    log.log(full_info())  # the writer is gone: counted, not queued forever, not raised
    assert log.dropped == 1
    assert log.written + log.dropped == 301


async def test_writer_runs_once(tmp_path, nursery):
    log = access_log(tmp_path / "access.log")
    await nursery.start(log.run)
    with pytest.raises(RuntimeError, match="only run once"):
        await log.run()


async def test_stdout(capfd):
    log = access_log("stdout", log_format="json")
    async with trio.open_nursery() as nursery:
        await nursery.start(log.run)
        log.log(full_info(path="/one"))
        log.log(full_info(path="/two"))
        await wait_written(log, 2)
        nursery.cancel_scope.cancel()
    out = capfd.readouterr().out
    assert [json.loads(line)["path"] for line in out.splitlines()] == ["/one", "/two"]


async def test_stderr_is_not_closed(capfd):
    log = access_log("stderr", log_format="%method% %path%")
    async with trio.open_nursery() as nursery:
        await nursery.start(log.run)
        log.log(full_info())
        nursery.cancel_scope.cancel()
    assert capfd.readouterr().err == "POST /api/v1?x=1\n"
    assert not sys.stderr.closed


async def test_unopenable_log_fails_before_started(tmp_path, nursery):
    log = access_log(tmp_path)  # a directory
    with pytest.raises(IsADirectoryError, match="cannot open access log") as info:
        await nursery.start(log.run)
    assert isinstance(info.value, OSError)
    assert str(tmp_path) in str(info.value)


async def test_missing_directories_are_created(tmp_path, nursery):
    path = tmp_path / "logs" / "mesh" / "access.log"
    log = access_log(path)
    await nursery.start(log.run)
    log.log(full_info())
    await wait_written(log, 1)
    assert path.read_text().count("\n") == 1


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
async def test_write_errors_count_lines_lost_and_the_writer_goes_on(caplog):
    log = access_log("/dev/full", log_format="%path%")
    async with trio.open_nursery() as nursery:
        await nursery.start(log.run)
        log.log(full_info(path="/a"))
        await wait_written(log, 1)
        log.log(full_info(path="/b"))
        await wait_written(log, 2)
        nursery.cancel_scope.cancel()
    assert (log.written, log.failed, log.dropped) == (0, 2, 0)
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "No space left" in errors[0].getMessage()


async def test_a_value_that_cannot_be_formatted_is_dropped_and_reported_once(
    tmp_path, nursery, caplog
):
    log = access_log(tmp_path / "access.log", log_format="%path%")
    await nursery.start(log.run)
    log.log(full_info(path=b"/bytes"))
    log.log(full_info(path=b"/bytes"))
    log.log(full_info(path="/fine"))
    await wait_written(log, 1)
    assert (log.written, log.dropped) == (1, 2)
    assert len([r for r in caplog.records if "cannot format" in r.getMessage()]) == 1
