"""A SOFA bolt consumer: anthunder's ``Client`` (the SOFA Python client, in the ``test``
extra) calling ``sayHello`` of ``com.alipay.demo.HelloService:1.0`` through the sidecar.

    python examples/bolt_consumer.py --host 127.0.0.1:2045 --calls 3

``--host`` is where the calls go (default 127.0.0.1:2045: conf/bolt.yaml's listener; the
provider's own address calls it directly). Prints each answer; exits 0 when every call is
answered, else 1 with the reason.
"""

from __future__ import annotations

import argparse
import logging
import sys

SERVICE = "com.alipay.demo.HelloService:1.0"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1:2045", help="HOST:PORT to call")
    parser.add_argument("--calls", type=int, default=3)
    parser.add_argument("--service", default=SERVICE)
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds per call")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.CRITICAL)  # anthunder's registry attempts: unused here
    from anthunder import SERVICE_MAP, Client
    from mytracer import SpanContext  # anthunder's tracing context (installed with it)

    host, _, port = args.host.rpartition(":")
    # anthunder looks a service's address up in this map (no registry here).
    SERVICE_MAP[args.service] = (host, int(port))
    client = Client("bolt-consumer")
    for i in range(args.calls):
        try:
            answer = client.invoke_sync(
                args.service,
                "sayHello",
                f"call {i}".encode(),
                spanctx=SpanContext(),  # anthunder needs one (a new trace per call)
                timeout_ms=int(args.timeout * 1000),
            )
        except Exception as exc:  # a timeout, a refused connection, a bolt error status
            print(f"call {i} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
            return 1
        print(answer.decode(errors="replace"), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
