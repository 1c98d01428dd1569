"""anthunder's real bolt listener, started for a test (shared by the codec and proxy tests)."""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator

from tests import bolt_frames as frames


@contextlib.contextmanager
def anthunder_listener() -> Iterator[int]:
    """An anthunder ``AioListener`` serving ``frames.SERVICE`` (``sayHello`` answers
    ``b"\\n\\x05world:" + body``) on a thread; yields its port once it accepts."""
    from anthunder import AioListener, BaseService

    class Hello(BaseService):
        def sayHello(self, body):
            return b"\n\x05world:" + body

    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    listener = AioListener(("127.0.0.1", port), "trio-mesh-test")
    listener.handler.register_interface(frames.SERVICE, Hello)
    listener.run_threading()
    try:
        deadline = time.monotonic() + 10
        while True:  # the listener has no readiness signal of its own: connect until it accepts
            try:
                socket.create_connection(("127.0.0.1", port), timeout=5).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
        yield port
    finally:
        listener.shutdown()
