"""Frozen records: the config's tables as `@dataclass(frozen=True)` would make them, without compiling code at import.

`@dataclass` writes the source of `__init__`, `__eq__`, `__hash__`, `__repr__`, `__setattr__` and
`__delattr__` for each class and compiles it when the module loads: 6-7 ms for the config's ten
classes, spent before `lampctl serve` can claim its relays OFF (S1), and not kept in the bytecode
cache. A `Record` has the same methods once, here, already compiled. A subclass declares its fields
as a dataclass does (annotations in order, a default after `=`); type checkers read it as a frozen
dataclass (`dataclass_transform`). Defaults are shared between instances, so each must be immutable.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Self, dataclass_transform

if TYPE_CHECKING:  # a bound named in a string would be compiled at import, which this module is here to avoid
    from typing import TypeVar

    R = TypeVar("R", bound="Record")


class FrozenError(AttributeError):
    """A field of a record was assigned or deleted after it was made."""


@dataclass_transform(frozen_default=True)
class Record:
    """Fields set once by the constructor; compared, hashed and printed by their values, in order."""

    _fields: ClassVar[tuple[str, ...]] = ()
    _defaults: ClassVar[dict[str, Any]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        own = cls.__dict__.get("__annotations__", {})
        cls._fields = tuple(
            name for name, kind in own.items() if not str(kind).startswith(("ClassVar", "typing.ClassVar"))
        )
        cls._defaults = {name: cls.__dict__[name] for name in cls._fields if name in cls.__dict__}
        defaulted = False
        for name in cls._fields:
            if defaulted and name not in cls._defaults:
                raise TypeError(f"{cls.__name__}: field {name!r} without a default follows one with a default")
            defaulted = defaulted or name in cls._defaults

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        cls = type(self)
        fields = cls._fields
        if len(args) > len(fields):
            raise TypeError(f"{cls.__name__}() takes {len(fields)} values, got {len(args)}")
        values = dict(cls._defaults)
        values.update(zip(fields, args, strict=False))  # fewer values than fields: the rest by name or default
        for name, value in kwargs.items():
            if name not in fields:
                raise TypeError(f"{cls.__name__}() has no field {name!r}")
            if fields.index(name) < len(args):
                raise TypeError(f"{cls.__name__}() got two values for {name!r}")
            values[name] = value
        if len(values) < len(fields):
            missing = [name for name in fields if name not in values]
            raise TypeError(f"{cls.__name__}() needs {', '.join(repr(name) for name in missing)}")
        self.__dict__.update(values)

    def __setattr__(self, name: str, value: Any) -> None:
        raise FrozenError(f"{type(self).__name__}.{name} cannot be changed: make a new one with replace()")

    def __delattr__(self, name: str) -> None:
        raise FrozenError(f"{type(self).__name__}.{name} cannot be deleted")

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return self.__dict__ == other.__dict__

    def __hash__(self) -> int:
        return hash(tuple(self.__dict__[name] for name in self._fields))

    def __repr__(self) -> str:
        shown = ", ".join(f"{name}={self.__dict__[name]!r}" for name in self._fields)
        return f"{type(self).__name__}({shown})"

    def __replace__(self, **changes: Any) -> Self:
        return type(self)(**{**self.__dict__, **changes})


def replace(record: R, /, **changes: Any) -> R:
    """A copy of record with the named fields changed (as `dataclasses.replace`)."""
    return record.__replace__(**changes)
