"""Hot upgrade (MOSN's smooth upgrade, Envoy's hot restart): a new ``trio-mesh run`` takes the
listening sockets of the running one through a unix socket, so no connection is refused.

The running (old) process serves the upgrade socket. A starting (new) process connects, says
``hello``, gets ``{name, host, port}`` of every listening socket with the sockets themselves
(SCM_RIGHTS: duplicates, the old one keeps accepting on its copies), and, when asked, the old
process's configuration document (``inherit_old_mosnconfig``) and its service registry's state
(what the application published and subscribed, replayed by the new process before it is
ready). Once its server is LIVE it says ``ready``: the old process drains (``Server.drain``)
and exits 0; the new one then serves the upgrade socket itself. Anything that ends the link
before ``ready`` leaves the old one serving.

The protocol is JSON lines, each with ``"v": 1``; every read is bounded in size and time.
"""

from __future__ import annotations

import array
import errno
import hashlib
import json
import logging
import os
import socket
import stat
import struct
from collections.abc import Callable
from typing import Any, Protocol

import attrs
import trio

from ..config import MeshConfig
from ..config.registry import dubbo_registry_config
from ..config.scalars import Address
from ..errors import StartupError
from ..network.inherit import InheritedSockets, address_key, is_shared, mark_shared

log = logging.getLogger("trio_mesh.upgrade")

VERSION = 1
MAX_LINE = 64 * 1024  # a control message (the listener list)
MAX_DOCUMENT = 16 * 1024 * 1024  # the configuration document line
MAX_FDS = 512
CONNECT_TIMEOUT = 2.0
HELLO_TIMEOUT = 5.0  # the old side, for the new one's first line
ANSWER_TIMEOUT = 10.0  # the new side, for the sockets (and the document)
READY_TIMEOUT = 120.0  # the old side, for the new one to start (TLS contexts, DNS, xDS warm)
BYE_TIMEOUT = 5.0
#: accept() errors that are overload, not a broken socket (``network.listener``'s too).
_EXHAUSTED = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
ACCEPT_BACKOFF = 0.1
#: The name the admin API's socket is handed over under (no listener is named so: ``@``).
ADMIN = "@admin"
#: The registry API's socket (``extends: dubbo_registry``), likewise.
REGISTRY = "@registry"


class RegistryState(Protocol):
    """The old process's service registry, as a hot upgrade hands it over."""

    async def handover_state(self) -> dict[str, Any]:
        """What was published and subscribed (the API's requests, as JSON); from now on the
        registry refuses changes (503), until ``handover_failed``."""
        ...

    def handover_failed(self) -> None:
        """The upgrade did not complete: this process's registry takes changes again."""
        ...


class UpgradeError(Exception):
    """The upgrade link failed: a peer broke the protocol, a limit, or a deadline."""


# -- where the socket is ------------------------------------------------------------------


def default_socket_path(config_path: str, env: dict[str, str] | None = None) -> str:
    """``<dir>/upgrade-<first 12 hex of sha256(absolute config path)>.sock``; ``<dir>``:
    ``$RUNTIME_DIRECTORY`` (systemd), else ``/run/trio-mesh`` if writable, else
    ``$XDG_RUNTIME_DIR/trio-mesh``, else ``/tmp/trio-mesh-<uid>``."""
    env = dict(os.environ) if env is None else env
    digest = hashlib.sha256(os.path.abspath(config_path).encode()).hexdigest()[:12]
    return os.path.join(_runtime_dir(env), f"upgrade-{digest}.sock")


def _runtime_dir(env: dict[str, str]) -> str:
    runtime = env.get("RUNTIME_DIRECTORY")
    if runtime:
        return runtime.split(":", 1)[0]  # systemd lists several with ':'
    run = "/run/trio-mesh"
    if os.access(run, os.W_OK) or (not os.path.exists(run) and os.access("/run", os.W_OK)):
        return run
    xdg = env.get("XDG_RUNTIME_DIR")
    if xdg:
        return os.path.join(xdg, "trio-mesh")
    return f"/tmp/trio-mesh-{os.getuid()}"


def prepare_directory(path: str) -> None:
    """Create the socket's directory (0700) if missing; refuse one another user owns or
    others may write to (in /tmp, someone else may have made it first to catch our fds)."""
    directory = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        st = os.lstat(directory)
    except OSError as exc:
        raise UpgradeError(f"{directory}: cannot create: {exc.strerror or exc}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise UpgradeError(f"{directory}: not a directory")
    if st.st_uid != os.getuid():
        raise UpgradeError(f"{directory}: owned by uid {st.st_uid}, not us ({os.getuid()})")
    if st.st_mode & 0o022:
        raise UpgradeError(f"{directory}: others may write to it (mode {st.st_mode & 0o777:o})")


# -- the peer ------------------------------------------------------------------------------


def peer_allowed(peer_uid: int, own_uid: int) -> bool:
    """Only our own user (or root) may take our sockets or hand us theirs."""
    return peer_uid == own_uid or peer_uid == 0


def peer_credentials(sock: trio.socket.SocketType) -> tuple[int, int]:
    """``(pid, uid)`` of a connected unix socket's peer (SO_PEERCRED)."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, _gid = struct.unpack("3i", raw)
    return pid, uid


# -- JSON lines with descriptors ------------------------------------------------------------


class Link:
    """One end of an upgrade connection: JSON lines out, JSON lines (and fds) in."""

    def __init__(self, sock: trio.socket.SocketType, path: str) -> None:
        self.sock = sock
        self.path = path
        self._buffer = bytearray()
        self.fds: list[int] = []  # received, not yet claimed by the caller

    async def send(self, message: dict[str, Any], fds: list[int] = ()) -> None:  # type: ignore[assignment]
        data = encode(message)
        if fds:
            # The descriptors ride with the first bytes; the rest goes as plain data.
            rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))]
            sent = await self.sock.sendmsg([data], rights)
            data = data[sent:]
        while data:
            sent = await self.sock.send(data)
            data = data[sent:]

    async def receive(self, limit: int = MAX_LINE) -> dict[str, Any]:
        """The next line as a dict (the version checked); EOF, oversize, bad JSON: an
        ``UpgradeError``."""
        while True:
            end = self._buffer.find(b"\n")
            if end >= 0:
                line = bytes(self._buffer[:end])
                del self._buffer[: end + 1]
                break
            if len(self._buffer) > limit:
                raise UpgradeError(f"a line longer than {limit} bytes")
            data, ancillary, flags, _ = await self.sock.recvmsg(
                65536, socket.CMSG_SPACE(MAX_FDS * 4)
            )
            self._take_fds(ancillary)
            if flags & socket.MSG_CTRUNC:
                raise UpgradeError(f"more than {MAX_FDS} descriptors")
            if not data:
                raise UpgradeError("the peer closed the link")
            self._buffer += data
        return decode(line)

    def _take_fds(self, ancillary: list[tuple[int, int, bytes]]) -> None:
        self.fds.extend(rights(ancillary))

    def close(self) -> None:
        for fd in self.fds:
            os.close(fd)
        self.fds.clear()
        self.sock.close()


def encode(message: dict[str, Any]) -> bytes:
    return json.dumps({"v": VERSION, **message}, default=str).encode() + b"\n"


def decode(line: bytes) -> dict[str, Any]:
    """One received line as a dict, its version checked; a peer's ``error`` raised."""
    try:
        message = json.loads(line)
    except ValueError as exc:
        raise UpgradeError(f"not JSON: {exc}") from None
    if not isinstance(message, dict):
        raise UpgradeError("a message that is not an object")
    if message.get("v") != VERSION:
        raise UpgradeError(f"protocol version {message.get('v')!r}, expected {VERSION}")
    if "error" in message:
        raise UpgradeError(f"the peer refused: {message['error']}")
    return message


def rights(ancillary: list[tuple[int, int, bytes]]) -> list[int]:
    """The descriptors of SCM_RIGHTS messages in ``recvmsg``'s ancillary data."""
    received: list[int] = []
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds = array.array("i")
            fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
            received.extend(fds)
    return received


def listener_entries(handed: list[tuple[str, socket.socket]]) -> list[dict[str, Any]]:
    entries = []
    for name, s in handed:
        host, port = address_key(*s.getsockname()[:2])
        entry: dict[str, Any] = {"name": name, "host": host, "port": port}
        if is_shared(s):
            entry["shared"] = True  # systemd's: the new process must not shut it down either
        entries.append(entry)
    return entries


# -- the old side ---------------------------------------------------------------------------


@attrs.define
class Handed:
    """What an upgrade handed over: the new process's pid, the names it got."""

    pid: int
    names: list[str]


class UpgradeServer:
    """The running process's side: serves ``path`` until an upgrade completes (``upgraded``
    is then set, with ``handed``), one upgrade at a time.

    ``sockets()``: ``[(name, socket)]`` to hand over now; ``document()``: the configuration
    document this process runs (for ``inherit_old_mosnconfig``); ``registry``: the service
    registry whose state goes with them (asked for by the new process)."""

    def __init__(
        self,
        path: str,
        sockets: Callable[[], list[tuple[str, socket.socket]]],
        document: Callable[[], Any],
        registry: RegistryState | None = None,
    ) -> None:
        self.path = path
        self.sockets = sockets
        self.document = document
        self.registry = registry
        self.upgraded = trio.Event()
        self.handed: Handed | None = None
        self._busy = False
        #: Our sockets are out with a peer not yet ready (or failed): see ``handing``.
        self._out = False
        #: This process is stopping: no upgrade may start now (its sockets are closing).
        self.closed = False
        self._inode: tuple[int, int] | None = None

    @property
    def handing(self) -> bool:
        """A peer holds our sockets and may yet say ready: a drain must leave them
        listening (not shut them down) for it."""
        return self._out or self.upgraded.is_set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            listener = await bind_upgrade_socket(self.path)
        except UpgradeError as exc:
            # Serving goes on; only the next upgrade is impossible (it will start plain).
            log.error("upgrade socket %s: %s: hot upgrade unavailable", self.path, exc)
            task_status.started()
            return
        st = os.stat(self.path)
        self._inode = (st.st_dev, st.st_ino)
        log.info("upgrade socket: %s", self.path)
        try:
            async with trio.open_nursery() as nursery:
                task_status.started()
                exhausted = False
                while not self.upgraded.is_set():
                    try:
                        conn, _ = await listener.accept()
                    except OSError as exc:
                        # Linux's accept() fails with EMFILE even with nobody waiting: out
                        # of descriptors (a flood on the listeners) must not stop the
                        # proxy; back off as the listeners do.
                        if exc.errno not in _EXHAUSTED:
                            raise
                        if not exhausted:
                            log.warning("upgrade socket %s: accept: %s", self.path, exc.strerror)
                        exhausted = True
                        await trio.sleep(ACCEPT_BACKOFF)
                        continue
                    exhausted = False
                    nursery.start_soon(self._serve_one, conn)
        finally:
            listener.close()
            self._unlink_if_ours()

    def _unlink_if_ours(self) -> None:
        # After an upgrade the file is the new process's (it renamed its own over it).
        try:
            st = os.stat(self.path)
            if (st.st_dev, st.st_ino) == self._inode:
                os.unlink(self.path)
        except OSError:
            pass

    async def _serve_one(self, conn: trio.socket.SocketType) -> None:
        link = Link(conn, self.path)
        try:
            pid, uid = peer_credentials(conn)
            if not peer_allowed(uid, os.getuid()):
                log.warning("upgrade socket %s: refused pid %d (uid %d)", self.path, pid, uid)
                await _send_error(link, f"uid {uid} may not take these sockets")
                return
            if self.closed:
                await _send_error(link, "this process is stopping")
                return
            if self._busy or self.upgraded.is_set():
                log.warning(
                    "upgrade socket %s: refused pid %d: an upgrade is under way", self.path, pid
                )
                await _send_error(link, "an upgrade is under way")
                return
            self._busy = True
            try:
                await self._hand_over(link, pid)
            except (UpgradeError, OSError) as exc:
                log.error(
                    "upgrade by pid %d failed before ready (%s): %s; still serving",
                    pid,
                    self.path,
                    exc,
                )
            finally:
                self._busy = False
                self._out = False
        finally:
            link.close()

    async def _hand_over(self, link: Link, pid: int) -> None:
        with trio.fail_after(HELLO_TIMEOUT):
            hello = await link.receive()
        if hello.get("op") != "hello":
            raise UpgradeError(f"expected hello, got {hello.get('op')!r}")
        handed = [(name, s) for name, s in self.sockets() if s.fileno() != -1]
        listeners = listener_entries(handed)
        fds = [s.fileno() for _, s in handed]
        # Only a new process that asks gets the registry's line (the --workers supervisor's
        # side never does); the flag says it follows (an older process never sends it).
        registry = self.registry if hello.get("registry") is True else None
        sockets: dict[str, Any] = {"op": "sockets", "listeners": listeners}
        if registry is not None:
            sockets["registry"] = True
        self._out = True
        try:  # a peer that does not read must not hold the one upgrade slot forever
            with trio.fail_after(ANSWER_TIMEOUT):
                await link.send(sockets, fds)
                if hello.get("config") is True:
                    await link.send({"op": "config", "document": self.document()})
        except trio.TooSlowError:
            raise UpgradeError(f"the peer did not read within {ANSWER_TIMEOUT:g}s") from None
        frozen = False
        try:
            if registry is not None:
                # The credentials go too (the new process logs in as we did): only to our
                # own uid (or root: SO_PEERCRED, checked above) over a socket in a 0700 directory.
                # Bounded: the registry caps publications and subscriptions (and each
                # request's size); a larger line than MAX_DOCUMENT fails the upgrade.
                state = await registry.handover_state()
                frozen = True
                line = encode({"op": "registry", "state": state})
                if len(line) > MAX_DOCUMENT:
                    raise UpgradeError(f"the registry's state is over {MAX_DOCUMENT} bytes")
                try:
                    with trio.fail_after(ANSWER_TIMEOUT):
                        await link.send({"op": "registry", "state": state})
                except trio.TooSlowError:
                    raise UpgradeError(
                        f"the peer did not read within {ANSWER_TIMEOUT:g}s"
                    ) from None
            log.info(
                "upgrade: handed %d socket(s) to pid %d; waiting for it to be ready",
                len(fds),
                pid,
            )
            try:
                with trio.fail_after(READY_TIMEOUT):
                    ready = await link.receive()
            except trio.TooSlowError:
                raise UpgradeError(f"not ready within {READY_TIMEOUT:g}s") from None
            if ready.get("op") != "ready":
                raise UpgradeError(f"expected ready, got {ready.get('op')!r}")
        except BaseException:
            if frozen:
                assert registry is not None
                registry.handover_failed()
            raise
        self.handed = Handed(pid=pid, names=[name for name, _ in handed])
        self.upgraded.set()
        with trio.move_on_after(BYE_TIMEOUT):
            await link.send({"op": "bye", "pid": os.getpid()})


async def _send_error(link: Link, reason: str) -> None:
    with trio.move_on_after(BYE_TIMEOUT):
        try:
            await link.send({"error": reason})
        except OSError:
            pass


async def bind_upgrade_socket(path: str) -> trio.socket.SocketType:
    """A listening unix socket at ``path``, put in place atomically (bound under a temporary
    name, renamed over whatever is there: a stale file, or the old process's socket)."""
    prepare_directory(path)
    tmp = f"{path}.{os.getpid()}.tmp"
    try:  # out of descriptors (a flood on the listeners): no upgrade socket, serving goes on
        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    except OSError as exc:
        raise UpgradeError(f"cannot serve it: {exc.strerror or exc}") from None
    try:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        await sock.bind(tmp)
        os.chmod(tmp, 0o600)
        sock.listen(8)
        os.rename(tmp, path)
    except OSError as exc:
        sock.close()
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise UpgradeError(f"cannot serve it: {exc.strerror or exc}") from None
    except BaseException:
        sock.close()
        raise
    return sock


# -- the new side ---------------------------------------------------------------------------


@attrs.define
class Takeover:
    """A connection to the old process that handed us its sockets: ``ready()`` once LIVE."""

    link: Link
    inherited: InheritedSockets
    #: The old process's configuration document, when asked for (``inherit_old_mosnconfig``).
    document: Any = None
    #: The old process's registry state (``handover_state``), when asked for and it has one.
    registry: Any = None

    async def ready(self) -> bool:
        """Tell the old process to drain and go; its ``bye`` (bounded) confirms it heard.
        False: the link broke first (the old process gave up on us, e.g. not ready in time,
        and serves on)."""
        try:
            await self.link.send({"op": "ready"})
            with trio.move_on_after(BYE_TIMEOUT):
                bye = await self.link.receive()
                log.info("upgrade: the old process (pid %s) is draining", bye.get("pid"))
        except (UpgradeError, OSError) as exc:
            log.error("upgrade socket %s: after ready: %s", self.link.path, exc)
            return False
        finally:
            self.link.close()
        return True

    def abort(self) -> None:
        self.link.close()
        self.inherited.close_leftovers()


async def take_over(
    path: str, config: MeshConfig, *, want_config: bool, want_registry: bool = False
) -> Takeover | None:
    """Connect to the old process at ``path`` and take its sockets (and its registry's
    state with ``want_registry``, when it has a registry); ``None``: nobody there
    (no file, a stale one, not a socket): a plain start. A running process that refuses or
    breaks the protocol is a ``StartupError`` (its ports are busy: a plain start would fail)."""
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        with trio.fail_after(CONNECT_TIMEOUT):
            await sock.connect(path)
    except OSError as exc:
        sock.close()
        if exc.errno in (errno.ENOENT, errno.ECONNREFUSED, errno.ENOTSOCK, errno.ENOTDIR):
            return None
        raise StartupError(
            f"upgrade socket {path}: cannot connect: {exc.strerror or exc}"
        ) from None
    except trio.TooSlowError:
        sock.close()
        raise StartupError(
            f"upgrade socket {path}: no answer within {CONNECT_TIMEOUT:g}s"
        ) from None
    link = Link(sock, path)
    inherited: InheritedSockets | None = None
    try:
        pid, uid = peer_credentials(sock)
        if not peer_allowed(uid, os.getuid()):
            raise UpgradeError(f"served by uid {uid} (pid {pid}), not by us")
        hello = {"op": "hello", "config": want_config, "pid": os.getpid()}
        if want_registry:
            hello["registry"] = True
        await link.send(hello)
        with trio.fail_after(ANSWER_TIMEOUT):
            answer = await link.receive()
            if answer.get("op") != "sockets":
                raise UpgradeError(f"expected sockets, got {answer.get('op')!r}")
            # With the old configuration to run, its names and addresses are ours.
            inherited = _inherited(answer.get("listeners"), link, None if want_config else config)
            document = None
            if want_config:
                message = await link.receive(MAX_DOCUMENT)
                if message.get("op") != "config":
                    raise UpgradeError(f"expected config, got {message.get('op')!r}")
                document = message.get("document")
            registry = None
            if answer.get("registry") is True:
                message = await link.receive(MAX_DOCUMENT)
                if message.get("op") != "registry" or not isinstance(message.get("state"), dict):
                    raise UpgradeError(f"expected registry, got {message.get('op')!r}")
                registry = message["state"]
    except (UpgradeError, OSError, trio.TooSlowError) as exc:
        if inherited is not None:  # received, never to be used: not leaked either
            for leftover in inherited.leftovers():
                leftover.close()
        link.close()
        reason = "no answer in time" if isinstance(exc, trio.TooSlowError) else exc
        raise StartupError(f"upgrade socket {path}: {reason}") from None
    except BaseException:
        link.close()
        raise
    assert inherited is not None
    log.info(
        "upgrade: pid %d handed over %d socket(s) (%s)",
        pid,
        len(inherited.leftovers()),
        path,
    )
    return Takeover(link=link, inherited=inherited, document=document, registry=registry)


def _inherited(listeners: Any, link: Any, config: MeshConfig | None) -> InheritedSockets:
    """``link``: a ``Link`` or a ``blocking.BlockingLink`` (its received ``fds`` taken)."""
    fds, link.fds = link.fds, []
    if not isinstance(listeners, list) or len(listeners) != len(fds):
        for fd in fds:
            os.close(fd)
        raise UpgradeError(f"{len(fds)} descriptor(s) for a listener list that does not match")
    # Our listener of the same name takes the old socket only where the address is the same
    # (or ours says port 0 on that host: it keeps the old port); a moved listener binds anew.
    wanted = {lst.name: lst.address for lst in config.listeners} if config else {}
    if config is not None and config.admin is not None:
        wanted[ADMIN] = config.admin.address
    registry = None if config is None else dubbo_registry_config(config)
    if registry is not None:
        wanted[REGISTRY] = Address(registry.api_host, registry.api_port)
    if config is not None:
        from ..config.metrics_check import prometheus_sinks
        from ..server import SINK_PREFIX

        for i, sink in enumerate(prometheus_sinks(config)):
            wanted[f"{SINK_PREFIX}{i}"] = Address(sink.address, sink.port)
    inherited = InheritedSockets()
    sockets = [socket.socket(fileno=fd) for fd in fds]
    for entry, sock in zip(listeners, sockets, strict=True):
        if not isinstance(entry, dict):
            for s in sockets:
                s.close()
            raise UpgradeError("a listener entry that is not an object")
        name, host, port = entry.get("name"), entry.get("host"), entry.get("port")
        if not isinstance(port, int) or not isinstance(host, str):
            sock.close()
            continue
        address = address_key(host, port)
        if entry.get("shared") is True:
            mark_shared(sock)
        inherited.by_address.setdefault(address, sock)
        ours = wanted.get(str(name))
        if config is None:
            inherited.by_name[str(name)] = sock
        elif ours is not None:
            configured = address_key(ours.host, ours.port)
            if configured == address or (ours.port == 0 and configured[0] == address[0]):
                inherited.by_name[str(name)] = sock
    return inherited


def read_document(path: str) -> Any:
    """The configuration file's document as parsed (what ``inherit_old_mosnconfig`` hands
    on); the file has just been validated, so errors here are only a race with an edit."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if path.lower().endswith(".json"):
        return json.loads(text)
    import yaml

    return yaml.safe_load(text)
