"""The registry of RPC codecs, by name.

Three sources, all lazy (nothing is imported until a codec is asked for):

* the built-ins below (``bolt``; ``dubbo`` once its module exists);
* the Python entry points of the group ``trio_mesh.xprotocols``: each names a `Codec`
  subclass or instance, ``mycodec = "my_pkg.codec:MyCodec"``, under the codec's own name;
* `register_protocol(name, codec)` at run time (tests, embedding).

A name is taken once: registering another codec under a taken name is a ValueError (registering
the very same codec object again is a no-op). Entry points never replace a codec registered
explicitly or built in; one that fails to load is logged and left out of `detect`, and `get` of
its name raises `UnknownCodec` from the load error.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING

from .base import NEED_MORE, Codec, Match, NeedMore

if TYPE_CHECKING:
    from importlib.metadata import EntryPoints

__all__ = [
    "ENTRY_POINT_GROUP",
    "UnknownCodec",
    "detect",
    "get",
    "names",
    "register_protocol",
    "unregister_protocol",
]

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "trio_mesh.xprotocols"

# name -> "module:attribute"; a built-in whose module is not there (yet) is skipped
_BUILTINS = {
    "bolt": "trio_mesh.protocols.xprotocol.bolt:BOLT",
    "dubbo": "trio_mesh.protocols.xprotocol.dubbo:DUBBO",
}

_codecs: dict[str, Codec] = {}  # in registration order: the order `detect` asks them
_failed: dict[str, BaseException] = {}
_all_loaded = False


def entry_points(*, group: str) -> EntryPoints:
    """``importlib.metadata.entry_points``, imported on first use: the scan of installed
    distributions is start-up time only an RPC listener or cluster needs."""
    from importlib.metadata import entry_points as scan

    return scan(group=group)


class UnknownCodec(KeyError):
    """No codec of that name is registered, built in, or provided by an entry point."""

    def __str__(self) -> str:
        return f"unknown RPC protocol {self.args[0]!r}"


def register_protocol(name: str, codec: Codec) -> None:
    """Register ``codec`` under ``name`` (ValueError if the name is taken by another codec)."""
    if not name:
        raise ValueError("protocol name must not be empty")
    if not isinstance(codec, Codec):
        raise TypeError(f"{codec!r} is not a trio_mesh.protocols.xprotocol.Codec")
    current = _codecs.get(name)
    if current is not None:
        if current is codec:
            return
        raise ValueError(f"RPC protocol {name!r} is already registered ({current!r})")
    _codecs[name] = codec
    _failed.pop(name, None)


def unregister_protocol(name: str) -> None:
    """Remove a codec (KeyError if it is not registered). Mostly for tests."""
    del _codecs[name]


def _as_codec(obj: object, name: str) -> Codec:
    if isinstance(obj, type) and issubclass(obj, Codec):
        obj = obj()
    if not isinstance(obj, Codec):
        raise TypeError(f"RPC protocol {name!r}: {obj!r} is not a Codec")
    if getattr(obj, "name", name) != name:
        raise ValueError(f"RPC protocol {name!r}: the codec calls itself {obj.name!r}")
    return obj


def _load_builtin(name: str) -> bool:
    target = _BUILTINS[name]
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:  # not written yet: no such built-in
            return False
        raise
    codec = _as_codec(getattr(module, attr), name)
    if name not in _codecs:
        register_protocol(name, codec)
    return True


def _load_entry_points(only: str | None = None) -> None:
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if only is not None and ep.name != only:
            continue
        if ep.name in _codecs or ep.name in _failed:
            continue
        try:
            codec = _as_codec(ep.load(), ep.name)
        except Exception as exc:
            log.warning(
                "RPC protocol entry point %s = %s failed to load: %s", ep.name, ep.value, exc
            )
            _failed[ep.name] = exc
            continue
        register_protocol(ep.name, codec)


def _load_all() -> None:
    global _all_loaded
    if _all_loaded:
        return
    _all_loaded = True
    for name in _BUILTINS:
        if name not in _codecs:
            _load_builtin(name)
    _load_entry_points()


def get(name: str) -> Codec:
    """The codec registered as ``name``, loading a built-in or an entry point on first use."""
    codec = _codecs.get(name)
    if codec is not None:
        return codec
    if name in _BUILTINS and _load_builtin(name):
        return _codecs[name]
    if name not in _failed:
        _load_entry_points(only=name)
        codec = _codecs.get(name)
        if codec is not None:
            return codec
    error = _failed.get(name)
    raise UnknownCodec(name) from error


def names() -> list[str]:
    """Every available codec's name (built-ins and entry points loaded), in `detect` order."""
    _load_all()
    return list(_codecs)


def detect(
    data: bytes | bytearray | memoryview, among: Iterable[str] | None = None
) -> Codec | NeedMore | None:
    """The codec whose magic bytes start ``data``: asks each codec (``among`` names limit them,
    in that order; by default every registered codec in registration order) and the first answer
    that is not `Match.NO` decides: YES gives the codec, NEED_MORE gives `NEED_MORE` (wait for
    more bytes). None when no codec can match."""
    if among is None:
        _load_all()
        candidates: Iterable[Codec] = list(_codecs.values())
    else:
        candidates = [get(name) for name in among]
    for codec in candidates:
        result = codec.match(data)
        if result is Match.YES:
            return codec
        if result is Match.NEED_MORE:
            return NEED_MORE
    return None
