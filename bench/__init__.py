"""Benchmark harness: trio-mesh against direct, nginx, proxy.py and mitmproxy (``python -m bench``).

Not part of the test suite: speed is measured here, side by side in one run, never asserted
in unit tests. See ``python -m bench http1 --help``.
"""
