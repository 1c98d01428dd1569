"""RPC protocols behind one sans-IO interface (MOSN's XProtocol): see `base` for the codec
interface, `registry` for names, entry points and magic-byte detection, and docs/xprotocol.md
for writing a new codec. Importing this package imports no codec."""

from .base import (
    DEFAULT_MAX_FRAME_SIZE,
    EMPTY_HEADERS,
    NEED_MORE,
    Codec,
    ErrorKind,
    Frame,
    FrameKind,
    FrameTooLarge,
    Match,
    XProtocolError,
    header_changes,
)
from .registry import (
    ENTRY_POINT_GROUP,
    UnknownCodec,
    detect,
    get,
    names,
    register_protocol,
    unregister_protocol,
)

__all__ = [
    "DEFAULT_MAX_FRAME_SIZE",
    "EMPTY_HEADERS",
    "ENTRY_POINT_GROUP",
    "NEED_MORE",
    "Codec",
    "ErrorKind",
    "Frame",
    "FrameKind",
    "FrameTooLarge",
    "Match",
    "UnknownCodec",
    "XProtocolError",
    "detect",
    "get",
    "header_changes",
    "names",
    "register_protocol",
    "unregister_protocol",
]
