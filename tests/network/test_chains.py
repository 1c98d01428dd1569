"""Filter chain selection (Envoy's order): names, then transport, then ALPN; the default."""

from __future__ import annotations

import attrs
import pytest

from trio_mesh.network.chains import Chain, ChainSelector


@attrs.frozen
class M:
    server_names: tuple[str, ...] = ()
    transport_protocol: str = ""
    application_protocols: tuple[str, ...] = ()


async def _h(conn: object) -> None:
    return None


def chain(i: int, match: M | None) -> Chain:
    return Chain(i, match, None, _h)


def pick(sel: ChainSelector, sni: str | None, tls: bool = True, alpn: tuple[str, ...] = ()) -> int:
    got = sel.select(sni, tls, alpn)
    return -1 if got is None else got.index


def test_exact_beats_wildcard_and_longest_suffix_wins() -> None:
    sel = ChainSelector(
        [
            chain(0, M(server_names=("*.example.com",))),
            chain(1, M(server_names=("*.b.example.com",))),
            chain(2, M(server_names=("a.b.example.com", "other.test"))),
            chain(3, None),
        ]
    )
    assert pick(sel, "a.b.example.com") == 2
    assert pick(sel, "other.test") == 2
    assert pick(sel, "x.b.example.com") == 1
    assert pick(sel, "deep.x.b.example.com") == 1
    assert pick(sel, "x.example.com") == 0
    assert pick(sel, "example.com") == 3  # "*.example.com" needs a label before it
    assert pick(sel, None) == 3
    assert pick(sel, "unrelated.test") == 3


def test_no_default_means_no_chain() -> None:
    sel = ChainSelector([chain(0, M(server_names=("a.test",)))])
    assert pick(sel, "a.test") == 0
    assert pick(sel, "b.test") == -1
    assert pick(sel, None, tls=False) == -1


def test_transport_protocol() -> None:
    sel = ChainSelector(
        [chain(0, M(transport_protocol="tls")), chain(1, M(transport_protocol="raw_buffer"))]
    )
    assert pick(sel, None, tls=True) == 0
    assert pick(sel, "x.test", tls=True) == 0
    assert pick(sel, None, tls=False) == 1
    # A chain without a transport criterion takes what the named ones do not.
    sel = ChainSelector([chain(0, M(transport_protocol="tls")), chain(1, None)])
    assert pick(sel, None, tls=False) == 1


def test_no_backtracking_then_the_default() -> None:
    """Envoy does not go back to a less specific name when the transport does not match
    among the chains the name chose; the default chain serves instead."""
    sel = ChainSelector(
        [
            chain(0, M(server_names=("a.test",), transport_protocol="tls")),
            chain(1, M(transport_protocol="raw_buffer")),
        ]
    )
    assert pick(sel, "a.test", tls=True) == 0
    assert pick(sel, "a.test", tls=False) == -1
    sel = ChainSelector([*sel.chains, chain(2, None)])
    assert pick(sel, "a.test", tls=False) == 2


def test_alpn_in_the_clients_order() -> None:
    sel = ChainSelector(
        [
            chain(0, M(application_protocols=("http/1.1",))),
            chain(1, M(application_protocols=("h2",))),
            chain(2, None),
        ]
    )
    assert pick(sel, None, alpn=("h2", "http/1.1")) == 1
    assert pick(sel, None, alpn=("http/1.1", "h2")) == 0
    assert pick(sel, None, alpn=("spdy/3",)) == 2
    assert pick(sel, None, alpn=()) == 2


@pytest.mark.parametrize("name", ["A.TEST", "a.test"])
def test_configured_names_are_case_insensitive(name: str) -> None:
    sel = ChainSelector([chain(0, M(server_names=(name,)))])
    assert pick(sel, "a.test") == 0
