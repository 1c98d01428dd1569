"""The registry API's request bodies: MOSN's shapes accepted, and every refusal (attacks
included) a RequestError naming the field."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from trio_mesh.registry.request import (
    MAX_BODY,
    RegistryRef,
    RegistryRequest,
    RequestError,
    ServiceRef,
    parse_request,
)

KINDS = ("pub", "unpub", "sub", "unsub")


def _body(**override: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "registry": {"type": "zookeeper", "addr": "127.0.0.1:2181"},
        "service": {
            "interface": "com.mosn.service.DemoService",
            "methods": ["GetUser", "GetProfile"],
            "group": "blue",
            "version": "1.0.3",
        },
    }
    for path, value in override.items():
        section, _, key = path.partition("__")
        if key:
            if value is _DROP:
                doc[section].pop(key, None)
            else:
                doc[section][key] = value
        elif value is _DROP:
            doc.pop(section)
        else:
            doc[section] = value
    return doc


_DROP = object()


def _parse(doc: Any, kind: str = "pub") -> RegistryRequest:
    return parse_request(json.dumps(doc).encode(), kind=kind)  # type: ignore[arg-type]


def _refused(doc: Any, kind: str = "pub") -> str:
    with pytest.raises(RequestError) as info:
        _parse(doc, kind)
    return str(info.value)


def test_mosn_pub_request() -> None:
    req = _parse(_body())
    assert req == RegistryRequest(
        registry=RegistryRef(type="zookeeper", addr="127.0.0.1:2181"),
        service=ServiceRef(
            interface="com.mosn.service.DemoService",
            methods=("GetUser", "GetProfile"),
            group="blue",
            version="1.0.3",
        ),
    )
    assert req.registry.key() == ("zookeeper", "127.0.0.1:2181", "", "")


def test_mosn_sub_request_without_version_and_unknown_keys_ignored() -> None:
    doc = _body(service__version=_DROP, registry__timeout="5s", extra={"x": 1})
    doc["service"]["port"] = "8080"
    req = _parse(doc, "sub")
    assert req.service.version == "" and req.service.group == "blue"


def test_nulls_are_absent_and_credentials_in_key() -> None:
    req = _parse(
        _body(
            service__group=None,
            service__version=None,
            registry__username="u",
            registry__password="p:w",
            registry__type="memory",
            registry__addr="zk1.example:2181,zk2.example:2182,[::1]:2183",
        )
    )
    assert req.service.group == "" and req.service.version == ""
    assert req.registry.key() == (
        "memory",
        "zk1.example:2181,zk2.example:2182,[::1]:2183",
        "u",
        "p:w",
    )


def test_consumer_wildcards() -> None:
    req = _parse(_body(service__group="a,b", service__version="*"), "sub")
    assert (req.service.group, req.service.version) == ("a,b", "*")
    assert _parse(_body(service__group="*"), "unsub").service.group == "*"
    assert _refused(_body(service__version="*"), "pub") == "service.version: must not contain '*'"
    assert _refused(_body(service__group="a,b"), "pub") == "service.group: must not contain ','"
    assert _refused(_body(service__version="1,2"), "sub") == "service.version: must not contain ','"


def test_methods_empty_only_to_withdraw() -> None:
    for kind in ("unpub", "unsub"):
        assert _parse(_body(service__methods=[]), kind).service.methods == ()
    for kind in ("pub", "sub"):
        assert _refused(_body(service__methods=[]), kind) == (
            "service.methods: at least one method is required"
        )
    for kind in KINDS:
        assert _refused(_body(service__methods=_DROP), kind) == "service.methods: required"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"registry": _DROP}, "registry: required"),
        ({"registry": None}, "registry: required"),
        ({"registry": []}, "registry: expected an object"),
        ({"service": _DROP}, "service: required"),
        ({"service": "x"}, "service: expected an object"),
        ({"registry__type": _DROP}, "registry.type: required"),
        ({"registry__type": ""}, "registry.type: required"),
        ({"registry__type": 1}, "registry.type: expected a string"),
        (
            {"registry__type": "nacos"},
            "registry.type: 'nacos' is not supported (expected one of zookeeper, memory)",
        ),
        ({"registry__addr": _DROP}, "registry.addr: required"),
        ({"registry__addr": ["127.0.0.1:2181"]}, "registry.addr: expected a string"),
        ({"registry__addr": "127.0.0.1:2181/chroot"}, "registry.addr: a chroot is not supported"),
        ({"registry__addr": "a:1,b:2/x/y"}, "registry.addr: a chroot is not supported"),
        ({"registry__username": "u"}, "registry.password: required with a username"),
        ({"registry__password": "p"}, "registry.username: required with a password"),
        (
            {"registry__username": "u:x", "registry__password": "p"},
            "registry.username: must not contain ':' or control characters",
        ),
        (
            {"registry__username": "u\x00", "registry__password": "p"},
            "registry.username: must not contain ':' or control characters",
        ),
        (
            {"registry__password": 5, "registry__username": "u"},
            "registry.password: expected a string",
        ),
        ({"service__interface": _DROP}, "service.interface: required"),
        ({"service__interface": ""}, "service.interface: required"),
        ({"service__interface": {}}, "service.interface: expected a string"),
        ({"service__methods": "GetUser"}, "service.methods: expected a list of strings"),
        ({"service__methods": {"a": 1}}, "service.methods: expected a list of strings"),
        ({"service__methods": ["a", 1]}, "service.methods[1]: expected a string"),
        ({"service__methods": ["a", None]}, "service.methods[1]: expected a string"),
        ({"service__methods": ["a,b"]}, "service.methods[0]: 'a,b' is not a Java method name"),
        ({"service__methods": [""]}, "service.methods[0]: '' is not a Java method name"),
        ({"service__group": 3}, "service.group: expected a string"),
        ({"service__group": "a&b"}, "service.group: must not contain '&'"),
        ({"service__group": "a=b"}, "service.group: must not contain '='"),
        ({"service__group": "a/b"}, "service.group: must not contain '/'"),
        ({"service__group": "a b"}, "service.group: must not contain ' '"),
        ({"service__version": "1?2"}, "service.version: must not contain '?'"),
        ({"service__version": "1#2"}, "service.version: must not contain '#'"),
        ({"service__version": "1%2"}, "service.version: must not contain '%'"),
        ({"service__version": "1\x00"}, "service.version: must not contain '\\x00'"),
        ({"service__version": "1\n"}, "service.version: must not contain '\\n'"),
        ({"service__version": True}, "service.version: expected a string"),
    ],
)
def test_refused_with_field(override: dict[str, Any], message: str) -> None:
    assert _refused(_body(**override)) == message


@pytest.mark.parametrize(
    "interface",
    [
        "com/example/Svc",
        "../../zookeeper",
        "..",
        "com..Svc",
        ".Svc",
        "Svc.",
        "a\x00b",
        "com.example.Svc ",
        "1com.Svc",
        "com.exämple.Svc",
        "com.example.Svc\u0661",
        "zookeeper/quota",
    ],
)
def test_interface_must_be_a_java_name(interface: str) -> None:
    message = _refused(_body(service__interface=interface))
    assert message.startswith("service.interface: ") and "is not a Java name" in message


def test_interface_java_names_accepted() -> None:
    for name in ("Svc", "$Proxy", "_a.b$c.D_1", "com.example.Outer$Inner"):
        assert _parse(_body(service__interface=name)).service.interface == name


@pytest.mark.parametrize(
    "addr",
    [
        "127.0.0.1",  # no port (kazoo would default it; MOSN's binding requires it)
        "127.0.0.1:",
        ":2181",
        "127.0.0.1:0",
        "127.0.0.1:65536",
        "127.0.0.1:99999999999999999999",
        "127.0.0.1:-1",
        "127.0.0.1:+2181",
        "127.0.0.1: 2181",
        "127.0.0.1:\u0662\u0661\u0668\u0661",  # Arabic-Indic digits int() would take
        "127.0.0.1:\uff12\uff11\uff18\uff11",  # fullwidth digits
        "::1:2181",  # IPv6 without brackets
        "[::1]",
        "[::1:2181",
        "[::1]2181",
        "[1.2.3.4]:2181",
        "[zk]:2181",
        "127.0.0.1:2181,",
        ",127.0.0.1:2181",
        "a:1,,b:2",
        "zk host:2181",
        "zk_host:2181",
        "-zk:2181",
        "999.1.1.1:2181",
        "a\x00:2181",
        "zk.example:2181\n",
        "é.example:2181",
        "a" * 64 + ":2181",
    ],
)
def test_addr_refused(addr: str) -> None:
    message = _refused(_body(registry__addr=addr))
    assert message.startswith("registry.addr: ")


def test_addr_ipv6_and_lists_accepted() -> None:
    for addr in ("[::1]:2181", "[fd00::1]:1,10.0.0.1:65535,zk.example.:2181", "localhost:1"):
        assert _parse(_body(registry__addr=addr)).registry.addr == addr


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "body: not JSON: "),
        (b"{", "body: not JSON: "),
        (b"[]", "body: expected a JSON object"),
        (b'"x"', "body: expected a JSON object"),
        (b"null", "body: expected a JSON object"),
        (b"\xff\xfe{}", "body: not UTF-8"),
        (b'{"a": "\xc3"}', "body: not UTF-8"),
        ('{"registry": {}}'.encode("utf-16"), "body: not UTF-8"),
        (b"\xef\xbb\xbf{}", "body: not JSON: "),  # a BOM
        (b'{"a": NaN}', "body: not JSON: "),
        (b'{"a": -Infinity}', "body: not JSON: "),
        (b'{"a": ' + b"1" * 5000 + b"}", "body: not JSON: "),
        (b"[" * 60000, "body: "),
        (b'{"a":' * 10000 + b"1" + b"}" * 10000, "body: "),
        (b" " * (MAX_BODY + 1), f"body: larger than {MAX_BODY} bytes"),
    ],
)
def test_bad_bodies(body: bytes, message: str) -> None:
    with pytest.raises(RequestError) as info:
        parse_request(body, kind="pub")
    assert str(info.value).startswith(message)
    assert info.value.field == "body"


def test_lone_surrogate_refused() -> None:
    body = _body()
    raw = json.dumps(body).replace("blue", "\\ud800").encode()
    with pytest.raises(RequestError) as info:
        parse_request(raw, kind="pub")
    assert str(info.value) == "service.group: not valid Unicode (a lone surrogate)"
    text = json.dumps(_body(registry__username="u"))
    text = text.replace("}, ", ', "password": "\\udfff"}, ', 1)
    with pytest.raises(RequestError) as info:
        parse_request(text.encode(), kind="pub")
    assert str(info.value) == "registry.password: not valid Unicode (a lone surrogate)"


def test_huge_but_bounded_body_parses() -> None:
    doc = _body(service__methods=[f"m{i}" for i in range(5000)])
    raw = json.dumps(doc).encode()
    assert len(raw) < MAX_BODY
    assert len(parse_request(raw, kind="pub").service.methods) == 5000


def test_unknown_kind_is_a_programming_error() -> None:
    with pytest.raises(ValueError) as info:
        parse_request(b"{}", kind="publish")  # type: ignore[arg-type]
    assert not isinstance(info.value, RequestError)


def test_request_error_fields() -> None:
    err = RequestError("service.interface", "required")
    assert (err.field, err.message, str(err)) == ("service.interface", "required", err.args[0])
    assert str(err) == "service.interface: required"


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=512), st.sampled_from(KINDS))
@example(b'{"registry": 1, "service": 1}', "pub")
@example(b'{"registry": {"type": "zookeeper", "addr": "[::1]:"}}', "sub")
def test_arbitrary_bytes_only_request_error(body: bytes, kind: str) -> None:
    try:
        parse_request(body, kind=kind)  # type: ignore[arg-type]
    except RequestError:
        pass


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
_registry = st.fixed_dictionaries(
    {},
    optional={
        "type": st.one_of(st.sampled_from(["zookeeper", "memory", ""]), _json),
        "addr": st.one_of(
            st.from_regex(r"[\[\]a-z0-9.:,/]{0,24}", fullmatch=True),
            st.text(max_size=24),
            _json,
        ),
        "username": st.one_of(st.text(max_size=6), _json),
        "password": st.one_of(st.text(max_size=6), _json),
    },
)
_service = st.fixed_dictionaries(
    {},
    optional={
        "interface": st.one_of(st.from_regex(r"[a-z.$_/0-9]{0,12}", fullmatch=True), _json),
        "methods": st.one_of(st.lists(st.text(max_size=6), max_size=3), _json),
        "group": st.one_of(st.text(max_size=6), _json),
        "version": st.one_of(st.text(max_size=6), _json),
    },
)


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.fixed_dictionaries(
        {},
        optional={"registry": st.one_of(_registry, _json), "service": st.one_of(_service, _json)},
    ),
    st.sampled_from(KINDS),
)
def test_arbitrary_json_only_request_error(doc: dict[str, Any], kind: str) -> None:
    raw = json.dumps(doc).encode()
    try:
        req = parse_request(raw, kind=kind)  # type: ignore[arg-type]
    except RequestError as exc:
        assert exc.field.split(".")[0].split("[")[0] in ("body", "registry", "service")
        return
    # Whatever was accepted can be written into a URL and a node name.
    from trio_mesh.registry.url import consumer_url, provider_url

    if kind in ("pub", "unpub"):
        provider_url(
            ip="10.0.0.1",
            port=1,
            interface=req.service.interface,
            methods=req.service.methods,
            group=req.service.group,
            version=req.service.version,
            timestamp_ms=1,
            pid=1,
        )
    else:
        consumer_url(
            ip="10.0.0.1",
            interface=req.service.interface,
            methods=req.service.methods,
            group=req.service.group,
            version=req.service.version,
            timestamp_ms=1,
            pid=1,
        )


_ids = st.from_regex(r"[A-Za-z_$][A-Za-z0-9_$]{0,8}", fullmatch=True)
_plain = st.from_regex(r"[A-Za-z0-9._:\-]{0,10}", fullmatch=True)


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    interface=st.lists(_ids, min_size=1, max_size=4).map(".".join),
    methods=st.lists(_ids, min_size=1, max_size=4),
    group=_plain,
    version=_plain,
    port=st.integers(1, 65535),
    host=st.one_of(
        st.ip_addresses(v=4).map(str),
        st.ip_addresses(v=6).map(lambda ip: f"[{ip}]"),
        st.from_regex(r"[a-z]([a-z0-9-]{0,8}[a-z0-9])?(\.[a-z]{1,5}){0,2}", fullmatch=True),
    ),
    kind=st.sampled_from(KINDS),
)
def test_valid_requests_accepted_as_given(
    interface: str, methods: list[str], group: str, version: str, port: int, host: str, kind: str
) -> None:
    doc = _body(
        registry__addr=f"{host}:{port}",
        service__interface=interface,
        service__methods=methods,
        service__group=group,
        service__version=version,
    )
    req = _parse(doc, kind)
    assert req.registry.addr == f"{host}:{port}"
    assert req.service == ServiceRef(
        interface=interface, methods=tuple(methods), group=group, version=version
    )
