"""Strict, typed settings tables: frozen dataclasses whose fields carry their rules.

Why not pydantic: the agent's memory budget on this machine is 120 MB peak RSS, and importing pydantic and
building the config models took 14 MB of it (measured with ``/proc/self/smaps`` around the imports, page
cache cold). The config needs few rules, and they are all here: strict types (no ``"1883"`` for a port,
no ``1`` for a boolean), bounds, choices, nested tables and lists of tables, unknown keys refused, per-field
checks before and after the type check, and per-table checks that run once every field of the table is
valid. Problems are collected, not raised one by one, so a config file gets one line per problem.
"""

from __future__ import annotations

import contextvars
import dataclasses
import difflib
import reprlib
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass
from pathlib import Path
from typing import Any, Literal, Union

Loc = tuple[str | int, ...]


@dataclass(frozen=True)
class Context:
    """What checks may need besides the value: the config file's folder, and whether files must exist."""

    base_dir: Path | None = None
    check_files: bool = True


Check = Callable[[Any, Context], Any]


@dataclass(frozen=True)
class Rule:
    """The rules of one field. ``before`` sees the raw value; ``after`` sees the typed, in-bounds value."""

    description: str
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    min_length: int | None = None
    max_length: int | None = None
    before: Check | None = None
    after: tuple[Check, ...] = ()

    @property
    def bounded(self) -> tuple[bool, bool]:
        """(has a lower bound, has an upper bound)."""
        return (self.ge is not None or self.gt is not None), (self.le is not None or self.lt is not None)


def setting(
    default: Any = MISSING,
    *,
    description: str,
    default_factory: Callable[[], Any] | Any = MISSING,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    min_length: int | None = None,
    max_length: int | None = None,
    before: Check | None = None,
    after: tuple[Check, ...] = (),
) -> Any:
    """A field of a :class:`Section`; without ``default`` or ``default_factory`` the key is required."""
    rule = Rule(description, ge, gt, le, lt, min_length, max_length, before, after)
    if default_factory is not MISSING:
        return dataclasses.field(default_factory=default_factory, metadata={"rule": rule})
    return dataclasses.field(default=default, metadata={"rule": rule})


def rule_of(field: dataclasses.Field[Any]) -> Rule:
    return field.metadata["rule"]


@dataclass(frozen=True)
class Problem:
    loc: Loc
    reason: str


class KeyProblem(ValueError):
    """Raised by a table's ``_check`` for a rule across tables that belongs to one key (``loc`` inside the table),
    so the problem is reported at that key's path and line rather than at the table."""

    def __init__(self, loc: Loc, reason: str) -> None:
        super().__init__(reason)
        self.loc = loc


class SchemaError(ValueError):
    """A section built in code with a bad value: the first problem, with its key path."""


# Set while validated values are turned into instances, so __post_init__ does not check them twice.
_trusted = contextvars.ContextVar("facelite_schema_trusted", default=False)


class Section:
    """Base of a settings table. Subclasses are ``@dataclass(frozen=True, kw_only=True)`` with
    :func:`setting` fields; cross-field rules go in ``_check`` (raise ``ValueError``)."""

    def __post_init__(self) -> None:
        # Built in code (defaults, tests, callers): the same rules as a config file, misuse fails here.
        if _trusted.get():
            return
        problems: list[Problem] = []
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}  # type: ignore[arg-type]
        checked = validate(type(self), data, Context(), (), problems)
        if problems:
            first = problems[0]
            where = key_path(first.loc)
            raise SchemaError(f"{type(self).__name__}: {where + ': ' if where else ''}{first.reason}")
        for name in data:
            object.__setattr__(self, name, getattr(checked, name))

    def _check(self) -> None:
        """Rules across fields; runs only when every field is valid."""

    @classmethod
    def unknown_key_reason(cls, key: str) -> str:
        close = difflib.get_close_matches(key, [f.name for f in dataclasses.fields(cls)], n=1)  # type: ignore[arg-type]
        return "unknown key" + (f" (did you mean '{close[0]}'?)" if close else "")


def sections_of(cls: type[Section]) -> dict[str, type[Section]]:
    """Field name -> the Section type it holds (directly, optional, or as a list item)."""
    out = {}
    for name, annotation in _hints(cls).items():
        inner = _section_in(annotation)
        if inner is not None:
            out[name] = inner
    return out


def _section_in(annotation: Any) -> type[Section] | None:
    if isinstance(annotation, type) and issubclass(annotation, Section):
        return annotation
    for arg in typing.get_args(annotation):
        found = _section_in(arg)
        if found is not None:
            return found
    return None


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def validate(cls: type[Section], data: Any, ctx: Context, loc: Loc, problems: list[Problem]) -> Any:
    """``data`` (a table from TOML/YAML, or a section's own values) as an instance of ``cls``, or None with
    every problem appended to ``problems``."""
    if not isinstance(data, Mapping):
        problems.append(Problem(loc, f"must be a table (got {short(data)})"))
        return None
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    hints = _hints(cls)
    values: dict[str, Any] = {}
    ok = True
    for name, field in fields.items():
        if name not in data:
            if field.default is MISSING and field.default_factory is MISSING:
                problems.append(Problem((*loc, name), "required key is missing"))
                ok = False
            continue
        before = len(problems)
        value = _field(hints[name], rule_of(field), data[name], ctx, (*loc, name), problems)
        if len(problems) > before:
            ok = False
        else:
            values[name] = value
    for key in data:
        if key not in fields:
            problems.append(Problem((*loc, str(key)), cls.unknown_key_reason(str(key))))
            ok = False
    if not ok:
        return None
    token = _trusted.set(True)
    try:
        instance = cls(**values)
    finally:
        _trusted.reset(token)
    try:
        instance._check()
    except KeyProblem as exc:
        problems.append(Problem((*loc, *exc.loc), str(exc)))
        return None
    except ValueError as exc:
        problems.append(Problem(loc, str(exc)))
        return None
    return instance


_FAIL = object()


def _field(annotation: Any, rule: Rule, raw: Any, ctx: Context, loc: Loc, problems: list[Problem]) -> Any:
    value = raw
    if rule.before is not None:
        try:
            value = rule.before(value, ctx)
        except ValueError as exc:
            problems.append(Problem(loc, str(exc)))
            return None
    value = _typed(annotation, value, ctx, loc, problems)
    if value is _FAIL or value is None:
        return None
    reason = _bounds(rule, value)
    if reason:
        problems.append(Problem(loc, reason))
        return None
    for check in rule.after:
        try:
            value = check(value, ctx)
        except ValueError as exc:
            problems.append(Problem(loc, str(exc)))
            return None
    return value


def _typed(annotation: Any, value: Any, ctx: Context, loc: Loc, problems: list[Problem]) -> Any:
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType):
        members = typing.get_args(annotation)
        if value is None and type(None) in members:
            return None
        members = tuple(m for m in members if m is not type(None))
        for member in members[1:]:  # e.g. int | str: the first member that takes the value as it is
            if _plain_match(member, value):
                return _typed(member, value, ctx, loc, problems)
        return _typed(members[0], value, ctx, loc, problems)
    if origin is Literal:
        choices = typing.get_args(annotation)
        if any(type(value) is type(c) and value == c for c in choices):
            return value
        expected = ", ".join(repr(c) for c in choices[:-1]) + f" or {choices[-1]!r}"
        return _fail(problems, loc, f"must be one of {expected} (got {short(value)})")
    if origin is list:
        if not isinstance(value, list):
            return _fail(problems, loc, f"must be a list (got {short(value)})")
        (item_type,) = typing.get_args(annotation)
        items = [_typed(item_type, item, ctx, (*loc, i), problems) for i, item in enumerate(value)]
        return _FAIL if any(item is _FAIL for item in items) else items
    if isinstance(annotation, type) and issubclass(annotation, Section):
        if isinstance(value, annotation):
            return value  # checked when it was built
        before = len(problems)
        section = validate(annotation, value, ctx, loc, problems)
        return _FAIL if len(problems) > before else section
    if annotation is bool:
        return value if type(value) is bool else _fail(problems, loc, f"must be true or false (got {short(value)})")
    if annotation is int:
        return value if type(value) is int else _fail(problems, loc, f"must be an integer (got {short(value)})")
    if annotation is float:
        if type(value) in (int, float):
            try:
                return float(value)
            except OverflowError:
                pass
        return _fail(problems, loc, f"must be a number (got {short(value)})")
    if annotation is str:
        return value if type(value) is str else _fail(problems, loc, f"must be a string (got {short(value)})")
    if annotation is Path:
        if isinstance(value, str | Path):  # the one lax type: paths are written as strings
            return Path(value)
        return _fail(problems, loc, f"must be a path (got {short(value)})")
    raise TypeError(f"schema: no rule for type {annotation!r} at {key_path(loc)}")


def _plain_match(member: Any, value: Any) -> bool:
    return isinstance(member, type) and type(value) is member


def _fail(problems: list[Problem], loc: Loc, reason: str) -> Any:
    problems.append(Problem(loc, reason))
    return _FAIL


def _bounds(rule: Rule, value: Any) -> str:
    if isinstance(value, int | float):
        # Written as "not (x >= bound)" so NaN fails every bound instead of passing them all.
        as_float = isinstance(value, float)
        for op, bound, ok in (
            (">=", rule.ge, lambda b: value >= b),
            (">", rule.gt, lambda b: value > b),
            ("<=", rule.le, lambda b: value <= b),
            ("<", rule.lt, lambda b: value < b),
        ):
            if bound is not None and not ok(bound):
                shown = float(bound) if as_float else bound
                return f"must be {op} {shown} (got {short(value)})"
    if isinstance(value, str):
        if rule.min_length is not None and len(value) < rule.min_length:
            return f"must not be empty (got {short(value)})" if rule.min_length == 1 else "is too short"
        if rule.max_length is not None and len(value) > rule.max_length:
            return f"must be at most {rule.max_length} characters"
    if isinstance(value, list):
        if rule.min_length is not None and len(value) < rule.min_length:
            return f"must have at least {rule.min_length} item(s)"
        if rule.max_length is not None and len(value) > rule.max_length:
            return f"must have at most {rule.max_length} item(s)"
    return ""


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother = 2, 40, 40


def short(value: Any) -> str:
    # reprlib stops after a few items and levels: a value built from YAML aliases can hold billions of them.
    text = _REPR.repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def key_path(loc: Loc) -> str:
    """('cameras', 0, 'fps_limit') -> 'cameras[0].fps_limit'."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{_key_text(part)}" if out else _key_text(str(part)))
    return out


def _key_text(key: str) -> str:
    # Keys are the user's text: a newline or a terminal escape in an unknown key must not break the one-line
    # report (or the terminal showing it).
    return key if key.isprintable() else repr(key)
