"""The grammar of access log formats (``%variable%`` text or ``json``), known at load time so
a typo in a variable stops start-up with its path; ``trio_mesh.proxy.accesslog`` renders it."""

from __future__ import annotations

import re

JSON_FORMAT = "json"

#: The downstream TLS handshake's variables (Envoy's command operators), last in JSON lines.
TLS_VARIABLES = (
    "requested_server_name",
    "DOWNSTREAM_TLS_VERSION",
    "DOWNSTREAM_TLS_CIPHER",
    "DOWNSTREAM_PEER_SUBJECT",
    "DOWNSTREAM_PEER_ISSUER",
    "DOWNSTREAM_PEER_URI_SAN",
    "DOWNSTREAM_PEER_DNS_SAN",
    "DOWNSTREAM_PEER_SERIAL",
    "DOWNSTREAM_PEER_FINGERPRINT_256",
    "DOWNSTREAM_LOCAL_SUBJECT",
    "DOWNSTREAM_LOCAL_URI_SAN",
)
#: The variables trio-mesh records, in the order JSON lines carry them.
RECORDED = (
    "start_time",
    "request_received_duration",
    "response_received_duration",
    "duration",
    "bytes_sent",
    "bytes_received",
    "protocol",
    "response_code",
    "response_flag",
    "upstream_host",
    "upstream_cluster",
    "downstream_local_address",
    "downstream_remote_address",
    "request_id",
    "method",
    "path",
    "authority",
    "user_agent",
    "route_name",
    "upstream_transport_failure_reason",
    # MOSN's RPC variables (types.VarHeaderRPCService, types.VarHeaderRPCMethod)
    "x-mosn-rpc-service",
    "x-mosn-rpc-method",
    # tracing (Envoy-style names): the request's trace id (32 hex) and this hop's span id
    "TRACE_ID",
    "SPAN_ID",
    # the downstream connection's TLS (Envoy's names; "-" / null on a plaintext connection)
    *TLS_VARIABLES,
)
#: Variables MOSN defines that trio-mesh does not record (yet): accepted, rendered as ``-``.
PLACEHOLDERS = (
    "upstream_local_address",
    "request_finished_duration",
    "process_time_duration",
    "protocol_config",
)
#: Other MOSN names for the same variable.
ALIASES = {
    "response_flags": "response_flag",
    # Envoy's name of MOSN's requested_server_name: the SNI the client sent
    "REQUESTED_SERVER_NAME": "requested_server_name",
}
KNOWN = (*RECORDED, *ALIASES, *PLACEHOLDERS)
_HEADER_PREFIXES = ("request_header_", "response_header_")

# ``%name%`` with no whitespace in the name; ``%%`` (an empty name) is a literal ``%``.
_VARIABLE = re.compile(r"%([^%\s]*)%")


def parse_log_format(fmt: str) -> tuple[list[str], list[str]]:
    """The literal texts around the variables, and the variable names (one fewer)."""
    literals: list[str] = []
    names: list[str] = []
    text: list[str] = []
    position = 0
    for match in _VARIABLE.finditer(fmt):
        text.append(fmt[position : match.start()])
        position = match.end()
        name = match.group(1)
        if not name:
            text.append("%")
            continue
        if name not in KNOWN:
            hint = ""
            if name.startswith(_HEADER_PREFIXES):
                hint = "; header variables are not supported"
            raise ValueError(
                f"unknown access log variable %{name}% (known: {', '.join(KNOWN)}){hint}"
            )
        literals.append("".join(text))
        text = []
        names.append(ALIASES.get(name, name))
    text.append(fmt[position:])
    literals.append("".join(text))
    return literals, names


def validate_log_format(fmt: str | None) -> None:
    """Raise ``ValueError`` naming the first unknown ``%variable%`` in ``fmt``."""
    if fmt and fmt != JSON_FORMAT:
        parse_log_format(fmt)
