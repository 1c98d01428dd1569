"""Compiled route tables: pure functions from a request's host, path, query and headers to a
route. Built once per configuration (``RouteTable.compile``), never per request."""

from .table import Redirect, RetryPolicy, Route, RouteTable, apply_header_mutations

__all__ = ["Redirect", "RetryPolicy", "Route", "RouteTable", "apply_header_mutations"]
