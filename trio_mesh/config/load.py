"""Reading a configuration document (YAML or JSON) into a validated ``MeshConfig``."""

from __future__ import annotations

import io
import json
import logging
import os
from pathlib import Path
from typing import Any

import attrs

from .converter import converter, structure_errors
from .errors import ConfigError
from .model import MeshConfig
from .normalize import Report, normalize
from .validate import check, check_refs, unenforced
from .xds import resolve as resolve_xds

log = logging.getLogger("trio_mesh.config")


#: The top-level keys a configuration may have (fields and MOSN's known keys).
_TOP_LEVEL = (
    frozenset(f.name for f in attrs.fields(MeshConfig))
    | MeshConfig.MOSN_PENDING
    | set(MeshConfig.MOSN_REFUSED)
)


@attrs.frozen
class Loaded:
    config: MeshConfig
    warnings: tuple[str, ...]


def parse_config(data: Any, *, dynamic: bool = False) -> Loaded:
    """Validate an already-parsed document; raise ``ConfigError`` listing every problem.

    ``dynamic``: a part of an xDS snapshot, whose routes may name clusters the control plane
    has not sent (they answer 503, as in Envoy) or that the static part defines."""
    if not isinstance(data, dict):
        raise ConfigError([f"expected a mapping at the top level, got {type(data).__name__}"])
    if data and not any(str(k).lower() in _TOP_LEVEL for k in data):
        # A Grafana dashboard, a plugin's own settings: one line, not one per key.
        keys = ", ".join(sorted(map(str, data))[:5]) + (", ..." if len(data) > 5 else "")
        known = ", ".join(sorted(_TOP_LEVEL))
        raise ConfigError(
            [f"not a proxy configuration: no known top-level key in {keys} (known: {known})"]
        )
    report = Report()
    normalized = normalize(data, MeshConfig, "", report)
    errors = list(report.errors)
    if dynamic:
        report.refs[:] = [r for r in report.refs if r[0] != "cluster"]
    try:
        config = converter.structure(normalized, MeshConfig)
    except Exception as exc:  # every structuring error becomes a path line
        errors += structure_errors(exc) + check_refs(normalized, report.refs)
    else:
        errors += check_refs(normalized, report.refs) + check(config)
        errors += resolve_xds(
            config.xds, config.node, config.dynamic_resources, config.static_resources
        )[1]
    if errors:
        raise ConfigError(errors)
    report.warnings += unenforced(config)
    return Loaded(config=config, warnings=tuple(report.warnings))


def read_config(path: str | os.PathLike[str]) -> Loaded:
    """Read and validate a ``.yaml``/``.yml`` or ``.json`` file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{p}: cannot read: {exc.strerror or exc}"]) from None
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{p}: not UTF-8 text: {exc.reason}"]) from None
    suffix = p.suffix.lower()
    if suffix in (".yaml", ".yml"):
        data = _load_yaml(p, text)
    elif suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError([f"{p}:{exc.lineno}:{exc.colno}: invalid JSON: {exc.msg}"]) from None
    else:
        raise ConfigError([f"{p}: unknown config format {suffix!r} (use .yaml, .yml or .json)"])
    if data is None:  # an empty YAML file (or only comments), or a JSON ``null``
        raise ConfigError([f"{p}: empty configuration file"])
    if not isinstance(data, dict):
        raise ConfigError([f"{p}: expected a mapping at the top level, got {type(data).__name__}"])
    return parse_config(data)


def _load_yaml(path: Path, text: str) -> Any:
    import yaml  # only for YAML files: a JSON configuration starts without it

    # libyaml's parser (when PyYAML has it) is several times faster and builds the same
    # values (same constructor and resolver); a document it refuses is parsed again by the
    # pure-Python one, whose error message (with the line quoted) is the one reported.
    loader = getattr(yaml, "CSafeLoader", None)
    if loader is not None:
        try:
            return yaml.load(text, Loader=loader)
        except yaml.YAMLError:
            pass
    # A stream with a name: PyYAML's marks then say the file's name, not "<unicode string>".
    stream = io.StringIO(text)
    stream.name = str(path)
    try:
        return yaml.safe_load(stream)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        raise ConfigError([f"{where}: invalid YAML: {exc}"]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([f"{path}: invalid YAML: {exc}"]) from None


def load_config(path: str | os.PathLike[str]) -> MeshConfig:
    """Read, validate and return the configuration; each warning is logged once."""
    loaded = read_config(path)
    for w in loaded.warnings:
        log.warning("%s", w)
    return loaded.config
