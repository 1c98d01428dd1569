"""Upstream connection pools."""

from .http1 import H1Connection, H1Pool, PoolOverflow, State
from .manager import Pools

__all__ = ["H1Connection", "H1Pool", "PoolOverflow", "Pools", "State"]
