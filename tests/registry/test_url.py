"""Dubbo URLs and ZooKeeper node names: written as Java Dubbo writes them, read by the real
dubbo-ssl-python consumer, and read back (garbage included) without raising."""

from __future__ import annotations

from urllib.parse import quote

import pytest
from dubbo_ssl.common.util import parse_url
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import trio_mesh
from trio_mesh.registry.url import (
    ProviderUrl,
    configurators_path,
    consumer_url,
    consumers_path,
    matches,
    node_name,
    parse_node,
    provider_url,
    providers_path,
    select_hosts,
    select_weighted,
)

IFACE = "com.example.DemoService"


def _provider(**kw: object) -> str:
    args: dict[str, object] = {
        "ip": "10.0.0.7",
        "port": 20880,
        "interface": IFACE,
        "methods": ["sayHello", "echo"],
        "group": "",
        "version": "",
        "timestamp_ms": 1700000000000,
        "pid": 42,
    }
    args.update(kw)
    return provider_url(**args)  # type: ignore[arg-type]


def _foreign(address: str, query: str, *, scheme: str = "dubbo", iface: str = IFACE) -> str:
    """A node as another registrant (Java Dubbo, kazoo by hand) would write it."""
    return quote(f"{scheme}://{address}/{iface}?{query}", safe="")


def test_paths() -> None:
    assert providers_path(IFACE) == "/dubbo/com.example.DemoService/providers"
    assert consumers_path(IFACE) == "/dubbo/com.example.DemoService/consumers"
    assert configurators_path(IFACE) == "/dubbo/com.example.DemoService/configurators"


def test_provider_url_as_java_writes_it() -> None:
    url = _provider(group="g1", version="1.0.0")
    assert url == (
        "dubbo://10.0.0.7:20880/com.example.DemoService?anyhost=true&application=trio-mesh"
        "&deprecated=false&dubbo=2.0.2&dynamic=true&generic=false&group=g1"
        "&interface=com.example.DemoService&methods=echo,sayHello&pid=42"
        f"&release={trio_mesh.__version__}&revision=1.0.0&side=provider"
        "&timestamp=1700000000000&version=1.0.0"
    )
    keys = [part.split("=")[0] for part in url.split("?")[1].split("&")]
    assert keys == sorted(keys)


def test_provider_url_without_group_or_version_keeps_revision() -> None:
    url = _provider()
    query = url.split("?")[1]
    assert "group=" not in query and "version=" not in query
    assert f"revision={trio_mesh.__version__}" in query


def test_provider_url_methods_deduplicated_and_star_when_none() -> None:
    assert "methods=a,b&" in _provider(methods=["b", "a", "b"])
    assert "methods=*&" in _provider(methods=[])


def test_provider_url_ipv6_in_brackets() -> None:
    assert _provider(ip="fd00::1").startswith("dubbo://[fd00::1]:20880/")
    assert _provider(ip="[fd00::1]").startswith("dubbo://[fd00::1]:20880/")


@pytest.mark.parametrize(
    "kw",
    [
        {"port": 0},
        {"port": 65536},
        {"ip": "not an ip"},
        {"ip": ""},
        {"ip": "[[::1]]"},
        {"ip": "[10.0.0.1]"},
        {"interface": "com/example"},
        {"interface": "../etc"},
        {"interface": "a\x00b"},
        {"interface": ""},
        {"methods": ["a,b"]},
        {"methods": ["a b"]},
        {"group": "a&b"},
        {"group": "a=b"},
        {"group": "a/b"},
        {"group": "*"},
        {"group": "a,b"},
        {"version": "1#2"},
        {"version": "1?2"},
        {"version": "1\n"},
        {"version": "1%2"},
        {"version": "\ud800"},
    ],
)
def test_provider_url_refuses_what_cannot_be_written(kw: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        _provider(**kw)


def test_consumer_url() -> None:
    url = consumer_url(
        ip="10.0.0.8",
        interface=IFACE,
        methods=["sayHello"],
        group="a,b",
        version="*",
        timestamp_ms=5,
        pid=7,
    )
    assert url == (
        "consumer://10.0.0.8/com.example.DemoService?application=trio-mesh&category=consumers"
        "&check=false&dubbo=2.0.2&group=a,b&interface=com.example.DemoService"
        "&methods=sayHello&pid=7&side=consumer&timestamp=5&version=*"
    )
    assert consumer_url(
        ip="::1", interface=IFACE, methods=[], group="", version="", timestamp_ms=1, pid=1
    ).startswith("consumer://[::1]/com.example.DemoService?application=")


def test_node_name_is_java_url_encode() -> None:
    name = node_name(_provider())
    assert "/" not in name and ":" not in name and "?" not in name and "&" not in name
    assert name.startswith("dubbo%3A%2F%2F10.0.0.7%3A20880%2Fcom.example.DemoService%3F")


@pytest.mark.parametrize(("group", "version"), [("", ""), ("g1", "1.0.0"), ("", "2.0")])
def test_dubbo_ssl_python_reads_the_provider_node(group: str, version: str) -> None:
    parsed = parse_url(node_name(_provider(group=group, version=version)))
    assert parsed["scheme"] == "dubbo"
    assert parsed["hostname"] == "10.0.0.7"
    assert parsed["port"] == 20880
    assert parsed["host"] == "10.0.0.7:20880"
    assert parsed["path"] == f"/{IFACE}"
    fields = parsed["fields"]
    # Exactly what ZkRegister reads, and its group/version filter.
    assert fields["interface"] == IFACE
    assert fields["methods"] == "echo,sayHello"
    assert fields["dubbo"] == "2.0.2"
    assert fields["revision"] == (version or trio_mesh.__version__)
    assert fields.get("version") == (version or None)
    assert fields.get("group") == (group or None)


def test_dubbo_ssl_python_reads_an_ipv6_provider() -> None:
    parsed = parse_url(node_name(_provider(ip="fd00::1")))
    assert parsed["hostname"] == "fd00::1"
    assert parsed["port"] == 20880


def test_parse_node_reads_ours_back() -> None:
    got = parse_node(node_name(_provider(group="g", version="1.2")))
    assert got is not None
    assert (got.scheme, got.host, got.port, got.interface) == ("dubbo", "10.0.0.7", 20880, IFACE)
    assert got.params["group"] == "g" and got.params["version"] == "1.2"
    assert got.params["methods"] == "echo,sayHello"


def test_parse_node_foreign_forms() -> None:
    # Interface from the path when the parameter is absent (Dubbo's getServiceInterface).
    got = parse_node(_foreign("1.2.3.4:1", "side=provider"))
    assert got is not None and got.interface == IFACE
    # user:password@ stripped; a bare key counts as key=key; empty values as absent.
    got = parse_node(_foreign("u:p@h.example:2", "anyhost&group=&version=1"))
    assert got is not None and got.host == "h.example" and got.port == 2
    assert got.params == {"anyhost": "anyhost", "version": "1"}
    # A consumer node has no port.
    got = parse_node(_foreign("10.0.0.1", "category=consumers", scheme="consumer"))
    assert got is not None and got.port == 0
    assert parse_node(_foreign("[::1]:9", "")) == ProviderUrl("dubbo", "::1", 9, IFACE, {})


@pytest.mark.parametrize(
    "name",
    [
        "",
        "%",
        "%zz",
        "%ff%fe",  # not UTF-8 once decoded
        "dubbo",
        "dubbo%3A%2F%2F",
        quote("://h:1/x", safe=""),
        quote("dubbo://:1/x", safe=""),
        quote("dubbo://h:65536/x", safe=""),
        quote("dubbo://h:-1/x", safe=""),
        quote("dubbo://h:/x", safe="") + "%3Fa%3D1",
        quote("dubbo://h:\u0661\u0662/x", safe=""),  # Arabic-Indic digits
        quote("dubbo://h:1:2/x", safe=""),
        quote("dubbo://::1:20880/x", safe=""),  # unbracketed IPv6
        quote("dubbo://[::1/x", safe=""),
        quote("dubbo://[::1]x:1/x", safe=""),
        quote("dubbo://[1.2.3.4]:1/x", safe=""),
        quote("dubbo://bad_host!:1/x", safe=""),
        quote("dubbo://999.1.1.1:1/x", safe=""),
        quote("dubbo://h\x00:1/x", safe=""),
        quote("dubbo://" + "a" * 300 + ":1/x", safe=""),
    ],
)
def test_parse_node_garbage_is_none(name: str) -> None:
    assert parse_node(name) is None


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text())
@example("%ed%a0%80")  # an encoded lone surrogate
@example("dubbo%3A%2F%2F%5B%5D%3A1")
def test_parse_node_never_raises(name: str) -> None:
    got = parse_node(name)
    assert got is None or isinstance(got, ProviderUrl)


_names = st.from_regex(
    r"[A-Za-z_$][A-Za-z0-9_$]{0,8}(\.[A-Za-z_$][A-Za-z0-9_$]{0,8}){0,3}", fullmatch=True
)
_text = st.from_regex(r"[A-Za-z0-9._:\-]{0,12}", fullmatch=True)
_hosts = st.one_of(
    st.ip_addresses().map(str),
    st.from_regex(r"[a-z]([a-z0-9-]{0,10}[a-z])?(\.[a-z]{1,6}){0,3}", fullmatch=True),
)


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    interface=_names,
    host=_hosts,
    port=st.integers(1, 65535),
    group=_text,
    version=_text,
    methods=st.lists(st.from_regex(r"[a-z_][A-Za-z0-9_]{0,6}", fullmatch=True), max_size=4),
)
def test_round_trip(
    interface: str, host: str, port: int, group: str, version: str, methods: list[str]
) -> None:
    url = provider_url(
        ip=host,
        port=port,
        interface=interface,
        methods=methods,
        group=group,
        version=version,
        timestamp_ms=1,
        pid=1,
    )
    got = parse_node(node_name(url))
    assert got is not None
    assert (got.scheme, got.host, got.port, got.interface) == ("dubbo", host, port, interface)
    assert got.params.get("group", "") == group
    assert got.params.get("version", "") == version
    assert matches(got, interface=interface, group=group, version=version)
    assert select_hosts([node_name(url)], interface=interface, group=group, version=version) == (
        (host, port),
    )
    # And the real consumer reads the same.
    fields = parse_url(node_name(url))["fields"]
    assert fields["interface"] == interface
    assert fields.get("group", "") == group and fields.get("version", "") == version


def _p(query: str, *, scheme: str = "dubbo", iface: str = IFACE) -> ProviderUrl:
    got = parse_node(_foreign("1.1.1.1:1", query, scheme=scheme, iface=iface))
    assert got is not None
    return got


@pytest.mark.parametrize(
    ("query", "group", "version", "expected"),
    [
        ("", "", "", True),
        ("group=a", "", "", False),
        ("group=a", "a", "", True),
        ("group=a", "*", "", True),
        ("", "*", "", True),
        ("group=a", "b,a", "", True),
        ("group=a", "b , a", "", True),
        ("group=a", "b,ab", "", False),
        ("", "a,b", "", False),
        ("version=1.0", "", "", False),
        ("version=1.0", "", "1.0", True),
        ("version=1.0", "", "*", True),
        ("", "", "*", True),
        ("", "", "1.0", False),
        ("enabled=false", "", "", False),
        ("enabled=no", "", "", False),
        ("enabled=TRUE", "", "", True),
        ("enabled=", "", "", True),
        ("category=providers", "", "", True),
        ("category=configurators", "", "", False),
        ("category=consumers", "", "", False),
    ],
)
def test_matches_is_dubbo_is_match(query: str, group: str, version: str, expected: bool) -> None:
    assert matches(_p(query), interface=IFACE, group=group, version=version) is expected


def test_matches_scheme_and_interface() -> None:
    assert not matches(_p("", scheme="rest"), interface=IFACE, group="", version="")
    assert not matches(_p("", scheme="empty"), interface=IFACE, group="", version="")
    assert not matches(_p("interface=other.Svc"), interface=IFACE, group="", version="")
    assert matches(_p("interface=" + IFACE, iface="x.Y"), interface=IFACE, group="", version="")


def test_select_hosts_filters_dedups_sorts() -> None:
    children = [
        node_name(_provider(ip="10.0.0.9", port=2)),
        node_name(_provider(ip="10.0.0.1", port=3)),
        node_name(_provider(ip="10.0.0.1", port=3, pid=99)),  # the same address again
        node_name(_provider(ip="10.0.0.2", port=3, group="other")),
        node_name(_provider(ip="10.0.0.3", port=3, version="9")),
        _foreign("10.0.0.4:3", "enabled=false"),
        _foreign("10.0.0.5:3", "", scheme="rest"),
        _foreign("10.0.0.6", ""),  # no port
        "garbage",
        "%ff",
        quote("dubbo://fd00::2:3/x", safe=""),
    ]
    got = select_hosts(children, interface=IFACE, group="", version="")
    assert got == (("10.0.0.1", 3), ("10.0.0.9", 2))
    assert select_hosts(children, interface=IFACE, group="*", version="*") == (
        ("10.0.0.1", 3),
        ("10.0.0.2", 3),
        ("10.0.0.3", 3),
        ("10.0.0.9", 2),
    )


def test_select_weighted() -> None:
    children = [
        _foreign("10.0.0.1:1", ""),
        _foreign("10.0.0.2:1", "weight=5"),
        _foreign("10.0.0.3:1", "weight=-3"),
        _foreign("10.0.0.4:1", "weight=abc"),
        _foreign("10.0.0.5:1", "weight=99999999999"),
        _foreign("10.0.0.6:1", "weight=\u0665"),  # a unicode digit: not a number to Java
        _foreign("10.0.0.7:1", "weight=0"),
        _foreign("10.0.0.2:1", "weight=7"),  # listed twice: the largest weight
    ]
    assert select_weighted(children, interface=IFACE, group="", version="") == (
        ("10.0.0.1", 1, 100),
        ("10.0.0.2", 1, 7),
        ("10.0.0.3", 1, 0),
        ("10.0.0.4", 1, 100),
        ("10.0.0.5", 1, 100),
        ("10.0.0.6", 1, 100),
        ("10.0.0.7", 1, 0),
    )


def test_pure_modules_do_not_import_trio() -> None:
    import subprocess
    import sys

    code = (
        "import sys, trio_mesh.registry.url, trio_mesh.registry.request; "
        "sys.exit('trio' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
