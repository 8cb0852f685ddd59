"""The one config system: pydantic models for every job config and every method's options.

`JobConfig` is the base class: unknown fields are refused (`extra="forbid"`), field constraints
(`Field(ge=..., le=...)`, validators) do the checking, and a bad value becomes ONE MucraspError line
`field: message` (`error_line`, the only converter from pydantic's ValidationError). Constructing a
config directly (`PruneConfig(...)`) and validating user strings (`validated(Model, {"window": "-4"})`,
which is what `--set KEY=VALUE` uses) report the same way.
"""

from __future__ import annotations

from typing import Annotated, Any, Mapping, TypeVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationError

from mucrasp.errors import MucraspError

M = TypeVar("M", bound=BaseModel)


def error_line(exc: ValidationError, prefix: str = "", known: list[str] | None = None) -> str:
    """`field: message` for the first error (`prefix` names what was validated, e.g. "method 'mucrasp'")."""
    err = exc.errors()[0]
    field = ".".join(str(p) for p in err["loc"])
    message = str(err["msg"]).removeprefix("Value error, ").removeprefix("Assertion failed, ")
    if not field and ": " in message:  # a model-level validator names its field first
        field, _, message = message.partition(": ")
    if err["type"] == "extra_forbidden":
        message = "no such option" if not prefix else f"{prefix} has no such option"
        if known:
            message += f" (known: {', '.join(known)})"
        return f"{field}: {message}"
    where = f"{prefix}: " if prefix else ""
    if err["type"] == "missing":
        return f"{where}{field}: missing"
    if "input" in err and "got " not in message and not isinstance(err["input"], (dict, list, BaseModel)):
        message += f" (got {err['input']!r})"
    return f"{where}{field}: {message}" if field else f"{where}{message}"


class ConfigError(MucraspError):
    """A config that failed validation: one line, with pydantic's error kept for re-wording."""

    def __init__(self, line: str, error: ValidationError) -> None:
        super().__init__(line)
        self.validation_error = error


def validated(model: type[M], data: Mapping[str, Any], prefix: str = "") -> M:
    """`model` (a pydantic model or dataclass) from `data` (strings are coerced by pydantic), or one
    MucraspError naming the field."""
    fields = getattr(model, "__pydantic_fields__", None) or getattr(model, "model_fields", {})
    try:
        if isinstance(model, type) and issubclass(model, BaseModel):
            return model.model_validate(dict(data))
        from pydantic import TypeAdapter

        return TypeAdapter(model).validate_python(dict(data))
    except ConfigError as exc:  # raised by JobConfig.__init__, which model_validate calls
        raise MucraspError(error_line(exc.validation_error, prefix, sorted(fields))) from None
    except ValidationError as exc:
        raise MucraspError(error_line(exc, prefix, sorted(fields))) from None


class JobConfig(BaseModel):
    """Base of every job config and method-options model: strict fields, one-line errors."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True, validate_assignment=True)

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise ConfigError(error_line(exc, known=sorted(type(self).model_fields)), exc) from None


def field_default(model: type, name: str) -> Any:
    """A field's default (of a pydantic model or a dataclass), for the CLI option that sets it: the
    model is where the default is defined, and the CLI shows and uses that one."""
    if isinstance(model, type) and issubclass(model, BaseModel):
        return model.model_fields[name].get_default(call_default_factory=True)
    import dataclasses

    spec = {f.name: f for f in dataclasses.fields(model)}[name]
    if spec.default is not dataclasses.MISSING:
        return spec.default
    return spec.default_factory()  # type: ignore[misc]


def _split_list(value: Any) -> Any:
    """`--set markers=Thus,So` or `markers=["Thus", "So"]`: a string becomes a list of strings."""
    if isinstance(value, str):
        import json

        if value.lstrip().startswith("["):
            try:
                return json.loads(value)
            except json.JSONDecodeError as exc:
                raise ValueError(f"not a JSON list ({exc.msg})") from None
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


#: A tuple of strings that `--set KEY=a,b` (or a JSON list) can fill.
StrTuple = Annotated[tuple[str, ...], BeforeValidator(_split_list)]
