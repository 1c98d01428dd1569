"""A Dubbo consumer, as a Python application would write one with dubbo-ssl-python: calls
``sayHello`` (and ``add`` once) on a provider and prints the answers.

    # straight to an address: the sidecar's egress listener, a provider, the sidecar's ingress
    python examples/dubbo_consumer.py --host 127.0.0.1:20882 --calls 3
    # or find the providers in ZooKeeper (Dubbo's layout, dubbo-ssl-python's ZkRegister)
    python examples/dubbo_consumer.py --zookeeper 127.0.0.1:2181 --version 1.0.0

Exits 0 once every call is answered, 1 (with the reason on stderr) at the first failure.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

DEFAULT_INTERFACE = "org.apache.dubbo.demo.DemoService"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Call sayHello (and add) on a Dubbo provider, directly or found in ZooKeeper."
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--host", default=None, help="HOST:PORT to call (default 127.0.0.1:20882, the egress)"
    )
    where.add_argument(
        "--zookeeper",
        metavar="HOST:PORT",
        default=None,
        help="find the providers in this ZooKeeper (/dubbo/<interface>/providers)",
    )
    parser.add_argument("--interface", default=DEFAULT_INTERFACE, help="(%(default)s)")
    parser.add_argument("--group", default="", help="the service's group (none)")
    parser.add_argument(
        "--version",
        default="1.0.0",
        help="the service's version (%(default)s, dubbo-ssl-python's default)",
    )
    parser.add_argument("--calls", type=int, default=3, help="sayHello calls (%(default)s)")
    parser.add_argument("--name", default="world", help="sayHello's argument (%(default)s)")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds per call (%(default)s)")
    parser.add_argument("--verbose", action="store_true", help="dubbo-ssl and kazoo's logs")
    args = parser.parse_args(argv)
    if args.calls < 0:
        parser.error(f"--calls: expected 0 or more, got {args.calls}")
    if args.timeout <= 0:
        parser.error(f"--timeout: expected a positive number, got {args.timeout}")
    for option in ("host", "zookeeper"):
        value = getattr(args, option)
        if value is not None and not _hostport(value):
            parser.error(f"--{option}: expected HOST:PORT, got {value!r}")
    if args.host is None and args.zookeeper is None:
        args.host = "127.0.0.1:20882"
    return args


def _hostport(text: str) -> bool:
    host, sep, port = text.rpartition(":")
    return bool(sep and host and port.isdigit() and 0 < int(port) < 65536)


def call_all(args: argparse.Namespace) -> None:
    """Every call, printed as it is answered; raises at the first failure."""
    # Imported here so that --help works without dubbo-ssl-python installed.
    from dubbo_ssl.client import DubboClient, ZkRegister

    register = None
    if args.zookeeper is not None:
        # ZkRegister connects in its constructor (kazoo, a 15 s bound) and matches a provider's
        # group and version to ours exactly: an absent group is None there, not "".
        register = ZkRegister(args.zookeeper, application_name="dubbo-consumer-example")
    try:
        client = DubboClient(
            args.interface,
            group=(args.group or None) if register else args.group,
            version=(args.version or None) if register else args.version,
            zk_register=register,
            host=args.host,
        )
        for i in range(args.calls):
            name = f"{args.name} {i + 1}" if args.calls > 1 else args.name
            answer: Any = client.call("sayHello", [name], timeout=args.timeout)
            print(f"sayHello({name!r}) -> {answer!r}", flush=True)
        total: Any = client.call("add", [1, 2, 3], timeout=args.timeout)
        print(f"add(1, 2, 3) -> {total!r}", flush=True)
    finally:
        if register is not None:
            register.close()


def describe(exc: BaseException, args: argparse.Namespace) -> str:
    where = f"ZooKeeper {args.zookeeper}" if args.zookeeper else args.host
    if isinstance(exc, ConnectionRefusedError):
        return f"cannot connect to {where}: connection refused (is it running?)"
    name = type(exc).__name__
    if name == "KazooTimeoutError":
        return f"cannot connect to ZooKeeper {args.zookeeper} within 15 s"
    if name == "RegisterException":
        return f"no provider of {args.interface} in ZooKeeper {args.zookeeper}: {exc}"
    if name == "DubboResponseException":  # the provider (or the proxy) answered an error
        return f"{where} answered an error: {' '.join(str(exc).split())}"
    if name == "DubboRequestTimeoutException":
        return f"{where}: no answer in {args.timeout} s"
    if isinstance(exc, OSError):
        return f"cannot reach {where}: {exc.strerror or exc}"
    return f"{where}: {name}: {exc}"


def run(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.verbose:
        logging.basicConfig(level=logging.DEBUG)
    else:
        # Their error logs would repeat (with tracebacks) what the message below says.
        for name in ("dubbo_ssl", "kazoo"):
            logging.getLogger(name).setLevel(logging.CRITICAL + 1)
    try:
        call_all(args)
    except KeyboardInterrupt:
        return 130
    except ImportError as exc:
        print(f"dubbo-ssl-python is needed (pip install dubbo-ssl-python): {exc}", file=sys.stderr)
        return 1
    except Exception as exc:
        print(describe(exc, args), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(run())
