"""Config classes of the built-in stream filters, one module each, registered by type name
when the config layer is imported (a file validates without the runtime)."""

from . import (  # noqa: F401 - registration
    fault,
    flowcontrol,
    gzip,
    header_mutation,
    ip_access,
    mirror,
    payload_limit,
)
