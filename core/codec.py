"""Generated encoders and decoders for attrs classes: payments and events to and from JSON.

The stores write every payment and event as JSON and read them back; cattrs did it through
its generic dispatch (a hook call per field, a dict built and then serialised), which was
the largest share of a SQL store's CPU per change. This module writes, once per class, one
Python function that builds the object's dict in a single expression (and one that builds
the object from a dict), from the class's attrs fields and their types:

* ``plain``: the JSON-ready dict, exactly what :func:`aegispay.serialization.make_converter`'s
  ``unstructure`` gives (datetimes as ``isoformat()`` text, enums by value, tuples as lists,
  Money as ``{"minor": .., "currency": ..}``, None kept).
* ``native``: the same, except that values orjson serialises identically itself are left to
  it (a UTC ``datetime`` - RFC 3339 with ``+00:00`` and microseconds only when non-zero, as
  ``isoformat()`` - enums, tuples). Other datetimes (naive, other zones, subclasses) still go
  through ``isoformat()``: orjson would drop a seconds part of an offset and refuses
  datetime subclasses.
* ``dumps``: the JSON bytes. For a dict-backed class (payments and core events: no slots,
  nothing in ``__init__`` but storing the fields) whose instance's ``__dict__`` holds just
  its fields and UTC datetimes, orjson serialises that ``__dict__`` itself and calls back
  only for Money and nested attrs objects; otherwise ``native``'s dict.
* ``decode`` reads every field by name and calls the class; ``decode_owned`` converts the
  typed fields of a freshly parsed dict in place and makes it the new instance's
  ``__dict__`` (as ``payment._evolve`` does). A missing key (a row written before a field
  existed), an unknown enum value or malformed data raises, and the caller falls back to
  cattrs, which applies the defaults and raises its usual errors.

A class whose fields include a type this module does not know (say a plugin event's own
attrs-less class) gets no codec (``None``): callers keep cattrs for it.
"""

from __future__ import annotations

import collections.abc
import enum
import types
import typing
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from functools import cache
from typing import Any

import attrs
import orjson

from .money import Money

__all__ = ["Codec", "compile_codec"]

_PLAIN_TYPES = (str, int, bool, float, type(None))
_MAPPINGS = (collections.abc.Mapping, dict, typing.Mapping, typing.Dict)  # noqa: UP006


@attrs.frozen
class Codec:
    """One class's generated functions (see the module doc).

    ``plain(o)``: the JSON-ready dict; ``dumps(o)``: the JSON bytes (same content);
    ``decode(d)``: the object from a dict it does not modify; ``decode_owned(d)``: the same
    from a dict the caller hands over (freshly parsed JSON), which it may reuse as the
    object's ``__dict__``. Both decoders raise (KeyError, ValueError...) on what they cannot
    read exactly, and the caller then falls back to cattrs."""

    plain: Callable[[Any], dict[str, Any]]
    dumps: Callable[[Any], bytes]
    decode: Callable[[Mapping[str, Any]], Any]
    decode_owned: Callable[[dict[str, Any]], Any]


def _money(m: Money) -> dict[str, Any]:
    return {"minor": m.minor, "currency": m.currency}


# orjson's ``default``: what it cannot serialise itself, by exact type (filled on first use).
_NESTED: dict[type, Callable[[Any], Any]] = {Money: _money}


def _default(value: Any) -> Any:
    kind = type(value)
    if kind is Money:  # most calls: inline, one Python call fewer
        return {"minor": value.minor, "currency": value.currency}
    encode = _NESTED.get(kind)
    if encode is not None:
        return encode(value)
    if isinstance(value, datetime):  # a subclass: orjson refuses those
        return value.isoformat()
    if isinstance(value, Mapping):
        return dict(value)
    codec = compile_codec(kind) if attrs.has(kind) else None
    if codec is None:
        raise TypeError(f"{kind.__qualname__} is not JSON serialisable")
    _NESTED[kind] = codec.plain
    return codec.plain(value)


class _Unsupported(Exception):
    """A field type without a generated form: the class keeps cattrs."""


class _Writer:
    """Builds the expressions of one class's three functions, with their globals."""

    def __init__(self) -> None:
        self.names: dict[str, Any] = {
            "_Money": Money,
            "_datetime": datetime,
            "_UTC": UTC,
            "_fromiso": datetime.fromisoformat,
        }
        self._n = 0
        self._stack: list[type] = []

    def var(self) -> str:
        self._n += 1
        return f"_v{self._n}"

    def ref(self, value: Any) -> str:
        name = f"_g{len(self.names)}"
        self.names[name] = value
        return name

    # -- one value: (plain expression, native expression, decode expression) ----------------

    def value(self, tp: Any, get: str, load: str) -> tuple[str, str, str]:
        """``get``: the expression of the attribute; ``load``: of the dict item."""
        if tp in _PLAIN_TYPES:
            return get, get, load
        origin, args = typing.get_origin(tp), typing.get_args(tp)
        if origin is typing.Union or origin is types.UnionType:
            rest = [a for a in args if a is not type(None)]
            if all(a in _PLAIN_TYPES for a in rest):
                return get, get, load
            if len(rest) != 1 or len(rest) == len(args):
                raise _Unsupported(tp)
            x, y = self.var(), self.var()
            plain, native, decode = self.value(rest[0], x, y)
            return (
                f"(None if ({x} := {get}) is None else {plain})",
                f"(None if ({x} := {get}) is None else {native})",
                f"(None if ({y} := {load}) is None else {decode})",
            )
        if tp is datetime:
            x = self.var()
            native = (
                f"({x} if type({x} := {get}) is _datetime and {x}.tzinfo is _UTC"
                f" else {x}.isoformat())"
            )
            return f"{get}.isoformat()", native, f"_fromiso({load})"
        if tp is Money:
            x, y = self.var(), self.var()
            encoded = f'{{"minor": ({x} := {get}).minor, "currency": {x}.currency}}'
            return encoded, encoded, f'_Money(({y} := {load})["minor"], {y}["currency"])'
        if isinstance(tp, type) and issubclass(tp, enum.Enum):
            # By value through the members' own map (calling the enum class is slower); a
            # value it lacks is a KeyError: the caller's cattrs fallback calls the class.
            try:
                members = self.ref({member.value: member for member in tp})
            except TypeError as error:  # unhashable values
                raise _Unsupported(tp) from error
            return f"{get}.value", get, f"{members}[{load}]"
        if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
            item = args[0]
            if item in _PLAIN_TYPES:
                return f"list({get})", get, f"tuple({load})"
            x, y = self.var(), self.var()
            plain, native, decode = self.value(item, x, y)
            return (
                f"[{plain} for {x} in {get}]",
                f"[{native} for {x} in {get}]",
                f"tuple([{decode} for {y} in {load}])",
            )
        if origin in _MAPPINGS and all(a in _PLAIN_TYPES for a in args):
            x = self.var()
            # A dict copy, as cattrs made: the object never shares the caller's mapping.
            return (
                f"dict({get})",
                f"({x} if type({x} := {get}) is dict else dict({x}))",
                (f"dict({load})"),
            )
        if isinstance(tp, type) and attrs.has(tp):
            return self.instance(tp, get, load)
        raise _Unsupported(tp)

    def instance(self, cls: type, get: str, load: str) -> tuple[str, str, str]:
        """A nested attrs instance, inlined (its own variable for the object and the dict)."""
        if cls in self._stack:  # a recursive type: no finite expression
            raise _Unsupported(cls)
        self._stack.append(cls)
        try:
            o, d = self.var(), self.var()
            plain, native, decode = self.fields(cls, o, d)
        finally:
            self._stack.pop()
        return (
            f"(({o} := {get}), {plain})[1]",
            f"(({o} := {get}), {native})[1]",
            f"(({d} := {load}), {decode})[1]",
        )

    def fields(self, cls: type, o: str, d: str) -> tuple[str, str, str]:
        """The dict displays and the constructor call of ``cls`` for object ``o``, dict ``d``."""
        try:
            hints = typing.get_type_hints(cls)
        except Exception as error:  # a name the class's module cannot resolve
            raise _Unsupported(cls) from error
        plain_items, native_items, arguments = [], [], []
        for field in attrs.fields(cls):
            if not field.init:
                raise _Unsupported(cls)
            name = field.name
            plain, native, decode = self.value(
                hints.get(name, field.type), f"{o}.{name}", f"{d}[{name!r}]"
            )
            plain_items.append(f"{name!r}: {plain}")
            native_items.append(f"{name!r}: {native}")
            arguments.append(f"{field.alias}={decode}")
        cls_ref = self.ref(cls)
        return (
            "{" + ", ".join(plain_items) + "}",
            "{" + ", ".join(native_items) + "}",
            f"{cls_ref}({', '.join(arguments)})",
        )


def _optional(tp: Any) -> Any:
    """``X`` for ``X | None`` (or ``Optional[X]``), else None."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        rest = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(rest) == 1 and len(rest) < len(typing.get_args(tp)):
            return rest[0]
    return None


def _orjson_exact(tp: Any) -> bool:
    """orjson writes a value of type ``tp`` as ``plain`` would (itself, or through
    ``_default``); not datetimes, which it writes differently in corner cases."""
    if tp in _PLAIN_TYPES or tp is Money:
        return True
    if isinstance(tp, type) and (issubclass(tp, enum.Enum) or attrs.has(tp)):
        return True
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType) or origin is tuple or origin in _MAPPINGS:
        return all(a is Ellipsis or _orjson_exact(a) for a in args)
    return False


def _native_checks(fields: Any, hints: dict[str, Any]) -> list[str] | None:
    """The conditions (on ``d``, an instance's ``__dict__``) under which orjson may write the
    ``__dict__`` itself, or None if it never may (a field type it could write differently)."""
    checks = [f"len(d) == {len(fields)}"]
    for field in fields:
        tp = hints[field.name]
        if tp is datetime or _optional(tp) is datetime:
            check = f"(type(x := d.get({field.name!r})) is _datetime and x.tzinfo is _UTC"
            checks.append(check + (")" if tp is datetime else " or x is None)"))
        elif not _orjson_exact(tp):
            return None
    return checks


def _dict_backed(cls: type) -> bool:
    """Every field of ``cls`` lives in its instances' ``__dict__`` and ``__init__`` only stores
    them (no slots, validators, converters or init hooks): then an instance's ``__dict__`` is
    its fields, and a dict of exactly those fields can become an instance's ``__dict__``."""
    if any("__slots__" in c.__dict__ for c in cls.__mro__ if attrs.has(c)):
        return False
    # ``__attrs_init__`` exists when the class writes its own ``__init__`` (which may do more).
    hooks = ("__attrs_pre_init__", "__attrs_post_init__", "__attrs_init__")
    if any(hasattr(cls, hook) for hook in hooks):
        return False
    return all(
        f.init and f.validator is None and f.converter is None and f.alias == f.name
        for f in attrs.fields(cls)
    )


@cache
def compile_codec(cls: type, extra: tuple[tuple[str, str], ...] = ()) -> Codec | None:
    """The generated functions for attrs class ``cls``, or None if a field's type has no
    generated form. ``extra``: (key, expression of the object ``o``) items appended to the
    encoded dicts (an event's ``type`` and ``event_id``); the decoders ignore those keys."""
    if not (isinstance(cls, type) and attrs.has(cls)):
        return None
    writer = _Writer()
    try:
        plain, native, decode = writer.fields(cls, "o", "d")
    except _Unsupported:
        return None
    if extra:
        tail = ", " + ", ".join(f"{key!r}: {expression}" for key, expression in extra) + "}"
        plain, native = plain[:-1] + tail, native[:-1] + tail
    fields = attrs.fields(cls)
    hints = typing.get_type_hints(cls)  # resolved by writer.fields already: cannot fail
    source = [
        f"def plain(o):\n    return {plain}\n",
        f"def native(o):\n    return {native}\n",
        f"def decode(d):\n    return {decode}\n",
    ]
    names = writer.names
    names.update(_dumps=orjson.dumps, _default=_default)
    checks = _native_checks(fields, hints) if _dict_backed(cls) else None
    if checks is None:
        source.append("def dumps(o):\n    return _dumps(native(o), default=_default)\n")
        source.append("decode_owned = decode\n")
    else:
        # The instance's own __dict__ goes to orjson as it is (no dict built, no attribute
        # read) when it holds just the fields and its datetimes are UTC ones, which orjson
        # writes exactly as isoformat() does; otherwise the generated dict.
        whole = "{**d, " + ", ".join(f"{k!r}: {e}" for k, e in extra) + "}" if extra else "d"
        source.append(
            "def dumps(o):\n"
            "    d = o.__dict__\n"
            f"    if {' and '.join(checks)}:\n"
            f"        return _dumps({whole}, default=_default)\n"
            "    return _dumps(native(o), default=_default)\n"
        )
        # Decoding a dict we own: convert the typed fields in place, check the keys, and
        # make that dict the instance's (as payment._evolve builds one).
        names.update(_new=object.__new__, _cls=cls, _keys=frozenset(f.name for f in fields))
        lines = ["def decode_owned(d):\n"]
        lines += [f"    d.pop({key!r}, None)\n" for key, _ in extra]
        for field in fields:
            load = f"d[{field.name!r}]"
            _, _, expression = writer.value(hints[field.name], "o", load)
            if expression != load:
                lines.append(f"    {load} = {expression}\n")
        lines.append(
            "    if d.keys() != _keys:\n        raise KeyError('fields')\n"
            "    o = _new(_cls)\n    o.__dict__.update(d)\n    return o\n"
        )
        source.append("".join(lines))
    namespace: dict[str, Any] = dict(names)
    code = compile("".join(source), f"<aegispay.codec {cls.__qualname__}>", "exec")
    exec(code, namespace)
    return Codec(namespace["plain"], namespace["dumps"], namespace["decode"],
                 namespace["decode_owned"])  # fmt: skip
