"""Method options: a typed dataclass per method, filled from a dict or from `--set key=value`."""

from __future__ import annotations

import dataclasses
import json
import typing
from typing import Any, TypeVar

from mucrasp.errors import MucraspError

C = TypeVar("C")


def method_config(config_class: type[C], options: dict[str, Any] | None, method: str) -> C:
    """Build `config_class` from `options`, refusing names it does not have."""
    options = dict(options or {})
    names = {f.name for f in dataclasses.fields(config_class)}
    unknown = sorted(set(options) - names)
    if unknown:
        raise MucraspError(f"method {method!r} has no option {', '.join(unknown)}; options: {', '.join(sorted(names))}")
    return config_class(**options)


def _convert(raw: str, annotation: Any, key: str) -> Any:
    origin = typing.get_origin(annotation)
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)) and args:
        if raw.lower() in ("none", "null", ""):
            return None
        return _convert(raw, args[0], key)
    if annotation is bool:
        if raw.lower() in ("1", "true", "yes", "on"):
            return True
        if raw.lower() in ("0", "false", "no", "off"):
            return False
        raise MucraspError(f"option {key}: expected true or false, got {raw!r}")
    if origin is tuple:
        items = json.loads(raw) if raw.startswith("[") else [part.strip() for part in raw.split(",") if part.strip()]
        return tuple(str(item) for item in items)
    try:
        return annotation(raw)
    except (TypeError, ValueError):
        raise MucraspError(f"option {key}: cannot read {raw!r} as {getattr(annotation, '__name__', annotation)}") from None


def parse_assignments(config_class: type | None, assignments: list[str], method: str) -> dict[str, Any]:
    """`["gamma_base=0.3", "markers=Thus,So"]` -> typed option values for `config_class`."""
    if not assignments:
        return {}
    if config_class is None:
        raise MucraspError(f"method {method!r} takes no options")
    hints = typing.get_type_hints(config_class)
    out = {}
    for item in assignments:
        key, sep, raw = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep:
            raise MucraspError(f"option {item!r} must look like KEY=VALUE")
        if key not in hints:
            raise MucraspError(f"method {method!r} has no option {key}; options: {', '.join(sorted(hints))}")
        out[key] = _convert(raw.strip(), hints[key], key)
    return out
