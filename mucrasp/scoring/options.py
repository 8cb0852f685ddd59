"""Method options: a pydantic model per method (`ScoringMethod.config_class`), filled from a dict
or from `--set key=value` strings through pydantic's own coercion (see `mucrasp.validation`)."""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel

from mucrasp.errors import MucraspError
from mucrasp.validation import validated

C = TypeVar("C", bound=BaseModel)


def method_config(config_class: type[C] | None, options: dict[str, Any] | None, method: str) -> C | None:
    """Build `config_class` from `options` (typed values or strings); unknown names and bad values are one
    error line."""
    options = dict(options or {})
    if config_class is None:
        if options:
            raise MucraspError(f"method {method!r} takes no options (got {', '.join(sorted(options))})")
        return None
    return validated(config_class, options, prefix=f"method {method!r}")


def resolved_options(
    config_class: type[BaseModel] | None, options: dict[str, Any] | None, method: str
) -> dict[str, Any]:
    """Every option's value, defaults included, as JSON-ready data (what a score cache key covers)."""
    config = method_config(config_class, options, method)
    return {} if config is None else config.model_dump(mode="json")


def parse_assignments(config_class: type[BaseModel] | None, assignments: list[str], method: str) -> dict[str, Any]:
    """`["gamma_base=0.3", "markers=Thus,So"]` -> typed option values for `config_class` (only those set)."""
    if not assignments:
        return {}
    raw: dict[str, str] = {}
    for item in assignments:
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise MucraspError(f"option {item!r} must look like KEY=VALUE")
        raw[key] = value.strip()
    config = method_config(config_class, raw, method)
    return {key: getattr(config, key) for key in raw}
