"""Errors and warnings of configuration loading, each tied to a path in the document."""

from __future__ import annotations


class ConfigError(Exception):
    """The configuration is invalid; ``errors`` holds one ``"path: reason"`` line per problem."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


def join_path(path: str, key: str | int) -> str:
    """``servers`` + 0 -> ``servers[0]``; ``servers[0]`` + ``name`` -> ``servers[0].name``."""
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def at(path: str, reason: str) -> str:
    return f"{path}: {reason}" if path else reason
