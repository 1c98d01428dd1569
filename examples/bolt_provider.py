"""A SOFA bolt provider: anthunder's ``AioListener`` (the SOFA Python server, in the ``test``
extra) serving ``com.alipay.demo.HelloService:1.0``, the application behind conf/bolt.yaml.

``sayHello(body)`` answers ``hello BODY from PROVIDER_NAME`` (bodies are raw bytes here; real
SOFA services put protobuf messages in them).

    python examples/bolt_provider.py --port 12200 --name provider-a

Prints one line once it accepts connections (``--port 0``: any free port, the line says which);
Ctrl-C or SIGTERM stops it (exit 0).
"""

from __future__ import annotations

import argparse
import logging
import signal
import socket
import sys
import threading
import time

SERVICE = "com.alipay.demo.HelloService:1.0"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until_accepting(port: int, timeout: float = 10.0) -> None:
    """anthunder's listener has no readiness signal of its own: connect until it accepts."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=timeout).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=12200, help="0: any free port")
    parser.add_argument("--name", default="provider", help="said in every answer")
    args = parser.parse_args(argv)
    # anthunder logs its (failing, here unused) service registry attempts: keep them quiet.
    logging.basicConfig(level=logging.CRITICAL)
    from anthunder import AioListener, BaseService

    name = args.name

    class Hello(BaseService):
        def sayHello(self, body: bytes) -> bytes:
            return b"hello " + body + b" from " + name.encode()

    port = args.port or free_port()
    listener = AioListener(("127.0.0.1", port), "bolt-provider")
    listener.handler.register_interface(SERVICE, Hello)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    listener.run_threading()
    try:
        wait_until_accepting(port)
        print(f"bolt provider {name} serving {SERVICE} on 127.0.0.1:{port}", flush=True)
        stop.wait()
    finally:
        listener.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
