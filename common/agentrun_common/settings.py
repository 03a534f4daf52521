"""The one settings loader: a frozen dataclass's fields read from environment variables.

Each field is read from ``<prefix><FIELD NAME IN CAPITALS>`` unless its annotation names another variable
(``Annotated[str, Env(name="POD_NAME")]``). An unset or blank variable keeps the field's default, as a Helm
template that renders an empty value expects. Values are converted by the field's type (str, int, float, a
``Literal`` of strings, or a nested settings dataclass read with its own prefix), seconds through the one
duration parser (a bare number "30" or a duration "90s", "1h30m"), and checked against the bounds the
annotation gives. Every error names the variable, the value, what is accepted and the default.
"""

import dataclasses
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal, TypeVar, get_args, get_origin, get_type_hints

from agentrun_common.durations import DURATION_FORMS, parse_seconds

SettingsT = TypeVar("SettingsT")


class SettingsError(ValueError):
    """An environment variable holds a value the process cannot use; the message names it and the fix."""


@dataclass(frozen=True)
class Env:
    """How the loader reads one field; annotations combine (``Annotated[Seconds, Env(name=...)]``)."""

    name: str = ""  # the variable, when it is not the prefix plus the field's name
    fallbacks: tuple[str, ...] = ()  # variables read, in order, when ``name`` is unset (e.g. POD_NAMESPACE)
    seconds: bool = False  # a number of seconds or a duration; an int field is rounded up to whole seconds
    minimum: float | None = None  # the smallest value allowed
    above: float | None = None  # the value must be greater than this
    maximum: float | None = None  # the largest value allowed
    prefix: str = ""  # a nested settings dataclass: the prefix of its variables
    # A value with a shape of its own (lists, a JSON object) read by its class from the whole environment; a
    # ValueError it raises becomes a SettingsError.
    reader: Callable[[Mapping[str, str]], Any] | None = None


Seconds = Annotated[float, Env(seconds=True, minimum=0)]
PositiveSeconds = Annotated[float, Env(seconds=True, above=0)]
Port = Annotated[int, Env(minimum=0, maximum=65535)]
Count = Annotated[int, Env(minimum=1)]

_UNSET: Any = object()


def load_settings(cls: type[SettingsT], environ: Mapping[str, str] | None = None, *, prefix: str) -> SettingsT:
    """An instance of the dataclass ``cls`` from ``environ`` (default: the process environment).

    Raises `SettingsError` for a value that does not parse or is out of bounds, and for what the class's own
    checks refuse."""
    env = os.environ if environ is None else environ
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls.__name__} is not a dataclass")
    hints = get_type_hints(cls, include_extras=True)
    values: dict[str, Any] = {}
    for field in dataclasses.fields(cls):
        if not field.init:
            continue
        kind, spec = _kind_and_spec(hints[field.name])
        if spec.reader is not None:
            try:
                values[field.name] = spec.reader(env)
            except ValueError as error:
                raise SettingsError(str(error)) from None
            continue
        if isinstance(kind, type) and dataclasses.is_dataclass(kind):
            values[field.name] = load_settings(kind, env, prefix=spec.prefix or prefix)
            continue
        for name in (spec.name or prefix + field.name.upper(), *spec.fallbacks):
            raw = env.get(name, "")
            if raw.strip():
                values[field.name] = _value(name, raw, kind, spec, _default(field))
                break
    try:
        return cls(**values)
    except SettingsError:
        raise
    except ValueError as error:  # the class's own checks, which name the variables
        raise SettingsError(str(error)) from None


def _kind_and_spec(hint: Any) -> tuple[Any, Env]:
    """The field's type without ``Annotated``, and its `Env` annotations merged (later ones win)."""
    spec = Env()
    if get_origin(hint) is Annotated:
        kind, *metadata = get_args(hint)
        for extra in metadata:
            if isinstance(extra, Env):
                changed = {
                    f.name: getattr(extra, f.name)
                    for f in dataclasses.fields(Env)
                    if getattr(extra, f.name) != f.default
                }
                spec = dataclasses.replace(spec, **changed)
        return kind, spec
    return hint, spec


def _default(field: "dataclasses.Field[Any]") -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return _UNSET


def _value(name: str, raw: str, kind: Any, spec: Env, default: Any) -> Any:
    text = raw.strip()
    keep_default = "" if default is _UNSET else f", or unset it for the default {default!r}"
    if get_origin(kind) is Literal:
        choices = [str(choice) for choice in get_args(kind)]
        if text in choices:
            return text
        folded = [choice for choice in choices if choice.casefold() == text.casefold()]
        if len(folded) == 1:
            return folded[0]
        raise SettingsError(f"{name}={raw!r} is not one of {', '.join(choices)}: set it to one of them{keep_default}")
    if kind is str:
        return text
    if kind not in (int, float):
        raise TypeError(f"{name}: the settings loader reads str, int, float and Literal fields, not {kind!r}")
    number: float
    if spec.seconds:
        try:
            number = parse_seconds(text)
        except ValueError:
            raise SettingsError(
                f"{name}={raw!r} is not a number of seconds: set it to seconds such as 30, or to {DURATION_FORMS}"
                f"{keep_default}"
            ) from None
        if kind is int:
            number = math.ceil(number)
    elif kind is int:
        try:
            number = int(text)
        except ValueError:
            raise SettingsError(
                f"{name}={raw!r} is not a whole number: set it to one such as 8{keep_default}"
            ) from None
    else:
        try:
            number = float(text)
        except ValueError:
            number = math.nan
        if not math.isfinite(number):
            raise SettingsError(f"{name}={raw!r} is not a number: set it to one such as 2.5{keep_default}")
    _check_bounds(name, raw, number, spec, keep_default)
    return int(number) if kind is int else float(number)


def _check_bounds(name: str, raw: str, number: float, spec: Env, keep_default: str) -> None:
    bounds = []
    if spec.minimum is not None:
        bounds.append((number >= spec.minimum, f"at least {spec.minimum:g}"))
    if spec.above is not None:
        bounds.append((number > spec.above, f"greater than {spec.above:g}"))
    if spec.maximum is not None:
        bounds.append((number <= spec.maximum, f"at most {spec.maximum:g}"))
    if not all(within for within, _ in bounds):
        wanted = " and ".join(text for _, text in bounds)
        raise SettingsError(f"{name}={raw!r} is out of range: set it to a value {wanted}{keep_default}")
