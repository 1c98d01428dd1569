"""Errors shared across layers."""

from __future__ import annotations


class StartupError(Exception):
    """The proxy cannot start as configured (a port in use, an access log it cannot open):
    the CLI prints it and exits 1, and nothing stays bound."""
