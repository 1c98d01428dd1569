"""Start-up imports only what the configuration uses (issue 15: start-up time).

Each check runs in a fresh interpreter: it imports ``trio_mesh.cli``, reads a configuration
file and starts a ``Server`` on it until every listener listens (what ``trio-mesh run`` does
before it reports ready), then prints the modules that were imported. Structural, not timed:
a built-in filter's modules load only when a configuration names it, the entry-point scan
(``importlib.metadata``) only for a filter name nothing built in provides, the YAML parser only
for a YAML file, the HTTP/2 and RPC proxies and the access log only when a listener uses them.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.cli_helpers import TIMEOUT
from trio_mesh.config import ConfigError, filter_configs, read_config
from trio_mesh.config.stream_filters.gzip import GzipConfig
from trio_mesh.config.stream_filters.ip_access import IpAccessConfig

_START = """
import json, sys
import trio
import trio_mesh.cli
from trio_mesh.config import ConfigError, read_config

async def main(config):
    from trio_mesh.server import Server

    async with trio.open_nursery() as nursery:
        await nursery.start(Server(config).run)
        nursery.cancel_scope.cancel()

try:
    loaded = read_config(sys.argv[1])
except ConfigError as exc:
    errors = exc.errors
else:
    errors = []
    trio.run(main, loaded.config)
print(json.dumps({"modules": sorted(sys.modules), "errors": errors}))
"""

BUILT_IN_STREAM = (
    "fault",
    "flowcontrol",
    "gzip",
    "header_mutation",
    "ip_access",
    "mirror",
    "payload_limit",
)


def http_doc(
    *, stream_filters: list[dict[str, Any]] | None = None, downstream: str = "Http1"
) -> dict[str, Any]:
    listener: dict[str, Any] = {
        "name": "web",
        "address": "127.0.0.1:0",
        "filter_chains": [
            {
                "filters": [
                    {
                        "type": "proxy",
                        "config": {"downstream_protocol": downstream, "router_config_name": "r"},
                    }
                ]
            }
        ],
    }
    if stream_filters is not None:
        listener["stream_filters"] = stream_filters
    return {
        "servers": [
            {
                "listeners": [listener],
                "routers": [
                    {
                        "router_config_name": "r",
                        "virtual_hosts": [
                            {
                                "name": "all",
                                "domains": ["*"],
                                "routers": [
                                    {"match": {"prefix": "/"}, "route": {"cluster_name": "up"}}
                                ],
                            }
                        ],
                    }
                ],
            }
        ],
        "cluster_manager": {"clusters": [{"name": "up", "hosts": [{"address": "127.0.0.1:9"}]}]},
    }


def start(tmp_path: Path, doc: dict[str, Any], name: str = "mesh.json") -> dict[str, Any]:
    """The modules imported by the time the server listens, and the config's errors."""
    path = tmp_path / name
    text = json.dumps(doc) if name.endswith(".json") else yaml.safe_dump(doc)
    path.write_text(text, encoding="utf-8")
    done = subprocess.run(
        [sys.executable, "-c", _START, str(path)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    return result


def filter_modules(modules: list[str]) -> set[str]:
    """The built-in stream filters whose config or implementation module was imported."""
    return {
        name
        for name in BUILT_IN_STREAM
        if f"trio_mesh.config.stream_filters.{name}" in modules
        or f"trio_mesh.filters.{name}" in modules
    }


def test_http1_json_config_starts_without_unused_modules(tmp_path: Path) -> None:
    started = start(tmp_path, http_doc())
    modules = started["modules"]
    assert started["errors"] == []
    assert "trio_mesh.proxy.http1" in modules  # the check sees what a start imports
    assert filter_modules(modules) == set()
    for unused in (
        "importlib.metadata",
        "yaml",
        "trio_mesh.proxy.http2",
        "trio_mesh.proxy.xprotocol",
        "trio_mesh.proxy.accesslog",
        "trio_mesh.filters.echo",
        "trio_mesh.filters.tcp_proxy",
        "trio_mesh.xds",
    ):
        assert unused not in modules


def test_only_the_named_stream_filter_is_imported(tmp_path: Path) -> None:
    doc = http_doc(stream_filters=[{"type": "fault", "config": {"abort_percent": 0}}])
    started = start(tmp_path, doc)
    assert started["errors"] == []
    assert filter_modules(started["modules"]) == {"fault"}
    assert "importlib.metadata" not in started["modules"]


def test_a_filter_named_only_on_a_route_is_imported_for_it(tmp_path: Path) -> None:
    doc = http_doc()
    route = doc["servers"][0]["routers"][0]["virtual_hosts"][0]["routers"][0]
    route["per_filter_config"] = {"header_mutation": {"request": {"remove": ["x-a"]}}}
    started = start(tmp_path, doc)
    assert started["errors"] == []
    assert filter_modules(started["modules"]) == {"header_mutation"}


def test_an_unknown_filter_scans_entry_points_and_lists_every_built_in(tmp_path: Path) -> None:
    started = start(tmp_path, http_doc(stream_filters=[{"type": "gzipp"}]))
    (error,) = started["errors"]
    assert "unknown stream filter type 'gzipp'" in error
    for name in BUILT_IN_STREAM:
        assert f"{name}," in error or f"{name})" in error
    assert "importlib.metadata" in started["modules"]


def test_a_yaml_file_imports_yaml_and_auto_imports_every_proxy(tmp_path: Path) -> None:
    started = start(tmp_path, http_doc(downstream="Auto"), name="mesh.yaml")
    assert started["errors"] == []
    modules = started["modules"]
    assert {"yaml", "trio_mesh.proxy.http2", "trio_mesh.proxy.xprotocol"} <= set(modules)


def test_built_in_names_are_taken_before_their_modules_load(tmp_path: Path) -> None:
    """Registering another class under a built-in name fails as it did when every built-in
    was imported up front; ``known_filters`` lists the built-ins without importing them."""
    script = """
import sys
from trio_mesh.config.filter_configs import known_filters, register_filter_config
from trio_mesh.filters.stream import StreamFilter, register_stream_filter

class Other:
    pass

for call in (
    lambda: register_filter_config("stream", "gzip", Other),
    lambda: register_filter_config("network", "ip_access", Other),
    lambda: register_stream_filter("fault", StreamFilter, None),
):
    try:
        call()
    except ValueError as exc:
        print(exc)
names = known_filters("stream")
print(",".join(n for n in ("flowcontrol", "mirror") if n in names))
print("trio_mesh.config.stream_filters.mirror" in sys.modules)
"""
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "stream filter 'gzip' is already registered",
        "network filter 'ip_access' is already registered",
        "stream filter 'fault' is already registered",
        "flowcontrol,mirror",
        "False",
    ]


def test_libyaml_reads_the_examples_as_the_python_parser_does() -> None:
    """``read_config`` parses YAML with libyaml when PyYAML has it: the same values."""
    if not getattr(yaml, "__with_libyaml__", False):
        return  # nothing to compare: read_config uses the pure-Python parser alone
    examples = sorted((Path(__file__).resolve().parents[2] / "conf").glob("*.yaml"))
    assert examples
    for path in examples:
        text = path.read_text(encoding="utf-8")
        assert yaml.load(text, Loader=yaml.CSafeLoader) == yaml.safe_load(text), path


def test_invalid_yaml_is_reported_with_the_python_parsers_message(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("servers:\n  - listeners: [\n", encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        read_config(path)
    with pytest.raises(yaml.MarkedYAMLError) as python_parser, path.open(encoding="utf-8") as f:
        yaml.safe_load(f)  # a named stream: the message names the file
    mark = python_parser.value.problem_mark
    assert mark is not None
    where = f"{path}:{mark.line + 1}:{mark.column + 1}"
    assert caught.value.errors == [f"{where}: invalid YAML: {python_parser.value}"]
    assert "but found" in caught.value.errors[0]  # libyaml words it differently


def test_a_built_in_resolves_after_its_module_was_imported_into_another_table(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A built-in's class comes from its table entry, not from a side effect of importing
    its module once: a test that swaps the registry's tables cannot lose it for later ones."""
    built_in = ("gzip", "ip_access")
    not_yet = {
        kind: {name: cls for name, cls in table.items() if name not in built_in}
        for kind, table in filter_configs._CONFIG_CLASSES.items()
    }
    monkeypatch.setattr(filter_configs, "_CONFIG_CLASSES", not_yet)  # as if never named yet
    with monkeypatch.context() as patched:
        patched.setattr(filter_configs, "_CONFIG_CLASSES", {"network": {}, "stream": {}})
        assert filter_configs.filter_config_class("stream", "gzip") is GzipConfig
    assert filter_configs.filter_config_class("stream", "gzip") is GzipConfig
    assert filter_configs.filter_config_class("network", "ip_access") is IpAccessConfig
