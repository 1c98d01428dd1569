"""Config of `ip_access` (MOSN's name and keys), as a stream filter and as a network filter.

MOSN's shape: ``ips`` is a list of ``{action: allow|deny, addrs: [IP or CIDR, ...]}``
checked in order (the first list that holds the address decides: ``allow`` lets it through,
``deny`` refuses it); an address no list holds gets ``default_action`` (``allow`` unless
given: MOSN's default). The short form ``{action: allow|deny, ips: [IP or CIDR, ...]}`` is one
such list, with the opposite action as the default: ``action: allow`` admits only those.
IPv4 and IPv6 both; ``header`` (stream filter only) takes the client address from a request
header instead of the connection.
"""

from __future__ import annotations

import enum
import ipaddress
from typing import Any

import attrs
from attrs import frozen

from ..converter import converter
from ..routes import Problem, _raise

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class IpAction(enum.Enum):
    ALLOW = "allow"
    DENY = "deny"


def parse_network(text: str) -> Network:
    """An address (``10.0.0.1``, ``::1``) or a CIDR (``10.0.0.0/8``; host bits may be set,
    as Go's ParseCIDR allows); ``ValueError`` with the reason."""
    try:
        return ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        raise ValueError(f"expected an IP address or CIDR, got {text!r}") from None


@frozen(kw_only=True)
class IpAccessList:
    """One list: MOSN's ``{action, addrs}``. ``action`` ``None``: an entry of the short form
    (a bare address in ``ips``), which takes the config's ``action``."""

    action: IpAction | None = IpAction.ALLOW
    addrs: tuple[str, ...]

    def __attrs_post_init__(self) -> None:
        problems: list[Problem] = []
        if not self.addrs:
            problems.append((("addrs",), "expected at least one address"))
        for i, text in enumerate(self.addrs):
            try:
                parse_network(text)
            except ValueError as exc:
                problems.append((("addrs", i), str(exc)))
        _raise(problems)


def _structure_list(value: Any, _: type) -> IpAccessList:
    if isinstance(value, str):  # the short form: a bare address
        parse_network(value)  # its error at this item's own path, which has no ``addrs``
        return IpAccessList(action=None, addrs=(value,))
    if not isinstance(value, dict):
        raise ValueError(f"expected an address or {{action, addrs}}, got {value!r}")
    # The ``attrs`` classes' own hook (made by the converter's factory for mappings).
    return _mapping(value, IpAccessList)


_mapping = converter.get_structure_hook(IpAccessList)
converter.register_structure_hook(IpAccessList, _structure_list)


def _no_header_if_empty(value: str | None) -> str | None:
    # Exactly "" only: MOSN reads the connection's address then. A name of blanks stays an
    # error (a typo, not MOSN's way of saying "none").
    return None if value == "" else value


@frozen(kw_only=True)
class IpAccessConfig:
    ips: tuple[IpAccessList, ...] = ()
    #: The short form's action for bare addresses in ``ips``.
    action: IpAction | None = None
    #: For addresses no list holds; ``None``: the opposite of ``action`` if it is given,
    #: else ``allow`` (MOSN).
    default_action: IpAction | None = None
    #: Stream filter only: the header that carries the client address (``1.2.3.4``,
    #: ``1.2.3.4:5678``, ``[::1]:5678``); absent or ``""`` (MOSN's example configs write
    #: ``header: ""``): the connection's address.
    header: str | None = attrs.field(default=None, converter=_no_header_if_empty)
    #: Refused requests also close their connection.
    close: bool = False

    def __attrs_post_init__(self) -> None:
        problems: list[Problem] = []
        if not self.ips:
            problems.append((("ips",), "expected at least one address or list"))
        for i, item in enumerate(self.ips):
            if item.action is None and self.action is None:
                problems.append(
                    (
                        ("ips", i),
                        "a bare address takes its action from 'action' beside 'ips'"
                        " (allow or deny), or write {action, addrs}",
                    )
                )
        if self.header is not None and not self.header.strip():
            problems.append((("header",), "expected a header name"))
        _raise(problems)

    def effective_default(self) -> IpAction:
        if self.default_action is not None:
            return self.default_action
        if self.action is not None:
            return IpAction.DENY if self.action is IpAction.ALLOW else IpAction.ALLOW
        return IpAction.ALLOW

    def rules(self) -> list[tuple[bool, tuple[Network, ...]]]:
        """``(allow, networks)`` of each list in order, bare addresses merged with their
        neighbours."""
        out: list[tuple[bool, list[Network]]] = []
        for item in self.ips:
            action = item.action or self.action
            allow = action is IpAction.ALLOW
            nets = [parse_network(a) for a in item.addrs]
            if item.action is None and out and out[-1][0] == allow:
                out[-1][1].extend(nets)
            else:
                out.append((allow, nets))
        return [(allow, tuple(nets)) for allow, nets in out]
