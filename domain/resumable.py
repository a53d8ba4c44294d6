"""Snapshots written by an earlier version resume in this one.

Bytewax keeps a key's state as a pickle. A slotted dataclass is unpickled by setting the
slots the pickle holds, so a field added since the snapshot was written is left unset, and
the first read of it fails deep inside a rule (``AttributeError``), long after the resume.
``resumable`` gives such a class a ``__setstate__`` that first sets every field that has a
default to it, then what the pickle holds: an old snapshot resumes with the new fields at
their defaults, as a new key starts. (A field without a default cannot have been added
compatibly; it stays unset, as before.) Copies are unaffected: the classes that are copied
for every snapshot have their own ``__deepcopy__``.

A class that changed a field's form since may define ``_resume_upgrade``, a static method
that takes what a pickle holds (field name → value) and returns it in today's form (an old
field renamed or re-encoded); it runs before the defaults are filled in.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def _field_defaults(cls: type) -> dict[str, Callable[[], Any]]:
    made: dict[str, Callable[[], Any]] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.default is not dataclasses.MISSING:
            made[f.name] = functools.partial(_same, f.default)
        elif f.default_factory is not dataclasses.MISSING:
            made[f.name] = f.default_factory
    return made


def _same(value: Any) -> Any:
    return value


def resumable(cls: type[T]) -> type[T]:
    """Class decorator (outside ``@dataclass``): see the module doc."""
    defaults = _field_defaults(cls)
    upgrade: Callable[[dict[str, Any]], dict[str, Any]] | None = getattr(
        cls, "_resume_upgrade", None
    )

    def __setstate__(self: Any, state: Any) -> None:
        # object.__reduce_ex__ pickles a slotted instance as (None, {slot: value}); one
        # with a __dict__ as the dict alone.
        held: dict[str, Any] = {}
        for part in state if isinstance(state, tuple) else (state,):
            if part:
                held.update(part)
        if upgrade is not None:
            held = upgrade(held)
        for name, make in defaults.items():
            if name not in held:
                object.__setattr__(self, name, make())
        for name, value in held.items():
            object.__setattr__(self, name, value)

    cls.__setstate__ = __setstate__  # type: ignore[attr-defined]
    return cls


def lists_as_tuples(held: dict[str, Any], *names: str) -> dict[str, Any]:
    """For a ``_resume_upgrade``: fields pickled as lists when they were lists, as tuples
    now (an empty tuple is one shared object; each empty list cost every key its own)."""
    for name in names:
        if isinstance(held.get(name), list):
            held[name] = tuple(held[name])
    return held
