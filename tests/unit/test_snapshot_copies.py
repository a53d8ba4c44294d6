"""Recovery snapshots: every hand-written ``__deepcopy__`` copies every field, and deeply.

Why: Bytewax snapshots each key's state with ``copy.deepcopy`` at every epoch. Several state
classes of ``domain/`` and ``flows/`` rebuild themselves field by field instead, because
the generic path is about ten times slower on their big dicts of small records (figures
below). A field added
to such a class but not to its ``__deepcopy__`` silently falls out of the recovery
snapshots (after a restart it is back at its default), and a container shared instead of
copied lets later batches change a snapshot already taken. Nothing else would notice.

How it works, with no per-class list to keep up to date:

- every module of ``domain`` and ``flows`` is imported and each class that defines
  ``__deepcopy__`` is checked (cross-checked against the classes the source files declare, so
  a class the import scan cannot see fails here rather than being skipped);
- a fully populated sample is built from the dataclass fields / ``__slots__`` and type hints:
  every int, str, float, bytes is new, ``bool`` is the opposite of its default, a container
  has one sampled entry, ``X | None`` is an ``X``, nested dataclasses are sampled the same way.
  No field of any record in the sample equals its default, so a copy that forgot one cannot
  pass by luck. A class that cannot be sampled fails, naming the field, until it is given an
  entry in ``EXPLICIT_SAMPLES``;
- ``copy.deepcopy(sample)`` is compared with an independently built twin of the sample, field
  by field and recursively (types, dict order, values);
- every mutable part of the copy (lists, dicts, sets, mutable records) is then overwritten and
  the original must still equal its twin, and the other way round. Records that are treated as
  immutable without being ``frozen`` (``VALUE_RECORDS``) may be shared and are not mutated.

Intentional differences are declared in ``RESET_ON_COPY`` with the value the copy must have.

What the hand-written copies buy, measured with a timeit script (best of 5 × 5 copies,
Python 3.11, the 2-core development machine, three runs): a stock pool of 60 skus × 50
locations = 3 000 positions, each after 7 movements (receipt, sales, a reservation, its
shipment and release, an adjustment: 7 seen ids, history, sales log), with 60 sku totals and
200 buffered movements (measured on the sharded layout before fulfilment; the pool is the
same parts in one state):

- ``copy.deepcopy(shard)`` through the hand-written copies: 18–23 ms;
- the same after ``delattr``-ing the ``__deepcopy__`` of the shard state, ``StockState``,
  ``SkuTotalsState``, ``InputProgress`` and ``EventTimeBuffer`` (the generic path): 232–260 ms,
  10–14 × as much, paid at every epoch.
"""

from __future__ import annotations

import ast
import copy
import dataclasses
import importlib
import pkgutil
import types
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest

import domain.events
from domain.progress import InputProgress
from domain.stock import StockMovement, StockPosition

ROOT = Path(__file__).resolve().parents[2]
#: Packages whose state classes Bytewax snapshots.
PACKAGES = ("domain", "flows")

#: Records that are treated as immutable but not declared ``frozen`` (a frozen ``__init__``
#: costs about five times as much and they are built per event or movement; see the
#: docstrings of ``domain.events`` and ``domain.stock``). A copy may share them, so they are
#: compared by value but never mutated here.
VALUE_RECORDS: frozenset[type] = frozenset(
    {
        *(
            v
            for v in vars(domain.events).values()
            if isinstance(v, type) and dataclasses.is_dataclass(v)
        ),
        StockMovement,
        StockPosition,
    }
)


@dataclass(frozen=True, slots=True)
class Reset:
    """A field a copy deliberately does not carry over: the value the copy must have."""

    value: object
    why: str


#: (class, field) → what the copy holds instead of the original's value (at any depth).
RESET_ON_COPY: dict[tuple[type, str], Reset] = {
    (InputProgress, "at_end"): Reset(
        set(),
        "a snapshot forgets which partitions were read to their end: after a restart a "
        "partition may have new data, and its source says again whether it is at its end",
    ),
}

#: Class → a function building a fully populated sample, for classes the sampler cannot
#: build (say why in a comment). Every sample built here goes through the same checks.
EXPLICIT_SAMPLES: dict[type, Callable[[], object]] = {}


# --- which classes -------------------------------------------------------------------------


def qualified(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def state_classes() -> tuple[list[type], list[str]]:
    """Classes of our packages that define their own ``__deepcopy__``, and the modules that
    could not be imported (reported by a test, so the other classes are still checked)."""
    found: list[type] = []
    broken: list[str] = []
    for package in PACKAGES:
        root = importlib.import_module(package)
        for info in pkgutil.walk_packages(root.__path__, f"{package}."):
            try:
                module = importlib.import_module(info.name)
            except Exception as error:
                broken.append(f"{info.name}: {error!r}")
                continue
            for value in list(vars(module).values()):  # vars: no lazy module __getattr__
                if (
                    isinstance(value, type)
                    and value.__module__ == module.__name__
                    and "__deepcopy__" in vars(value)
                ):
                    found.append(value)
    return sorted(found, key=qualified), broken


def declared_in_source() -> set[str]:
    """``module.Class`` of every class whose body defines ``__deepcopy__``, read from the
    source files: the reference the import scan is checked against."""
    names: set[str] = set()
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
            for node in ast.walk(tree):
                if isinstance(node, ast.ClassDef) and any(
                    isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef)
                    and item.name == "__deepcopy__"
                    for item in node.body
                ):
                    names.add(f"{module}.{node.name}")
    return names


STATE_CLASSES, UNIMPORTABLE = state_classes()


# --- samples -------------------------------------------------------------------------------


class Unsampleable(TypeError):
    """No automatic sample: give the class an entry in ``EXPLICIT_SAMPLES``."""


def attribute_names(cls: type) -> list[str] | None:
    """The fields of a dataclass or the slots of a slotted class; None for other values."""
    if dataclasses.is_dataclass(cls):
        return [f.name for f in dataclasses.fields(cls)]
    slots = [
        name
        for klass in reversed(cls.__mro__)
        for name in (
            (klass.__dict__.get("__slots__", ()),)
            if isinstance(klass.__dict__.get("__slots__", ()), str)
            else klass.__dict__.get("__slots__", ())
        )
        if name not in ("__dict__", "__weakref__")
    ]
    return slots or None


class Sampler:
    """Builds a sample from type hints; a new sampler gives the same sample again (the
    values come from a counter), which is how the independent twin of a sample is made."""

    def __init__(self) -> None:
        self.counter = 1000

    def number(self) -> int:
        self.counter += 1
        return self.counter

    def value(self, hint: Any, where: str, typevars: dict[Any, Any]) -> Any:
        if isinstance(hint, TypeVar):
            hint = typevars.get(hint, hint.__bound__ or str)
        origin, args = typing.get_origin(hint), typing.get_args(hint)
        if origin in (typing.Union, types.UnionType):
            present = [a for a in args if a is not type(None)]
            if not present:
                raise Unsampleable(f"{where}: only None fits {hint!r}")
            return self.value(present[0], where, typevars)
        if origin is typing.Literal:
            return args[0]
        if hint is bool:
            return True
        if hint is int:
            return self.number()
        if hint is float:
            return self.number() + 0.25
        if hint is str:
            return f"s{self.number()}"
        if hint is bytes:
            return f"b{self.number()}".encode()
        if origin is list and len(args) == 1:
            return [self.value(args[0], f"{where}[0]", typevars)]
        if origin in (set, frozenset) and len(args) == 1:
            return origin({self.value(args[0], f"{where}{{}}", typevars)})
        if origin is dict and len(args) == 2:
            key = self.value(args[0], f"{where}.key", typevars)
            return {key: self.value(args[1], f"{where}[{key!r}]", typevars)}
        if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
            return (self.value(args[0], f"{where}[0]", typevars),)
        if origin is tuple and args and Ellipsis not in args:
            return tuple(self.value(a, f"{where}[{n}]", typevars) for n, a in enumerate(args))
        cls = origin or hint
        if isinstance(cls, type) and attribute_names(cls) is not None:
            return self.record(cls, args, where)
        raise Unsampleable(f"{where}: no automatic sample for {hint!r}")

    def record(self, cls: type, args: tuple[Any, ...], where: str) -> object:
        """A dataclass through its ``__init__``; a slotted class by setting each slot."""
        typevars = dict(zip(getattr(cls, "__parameters__", ()), args, strict=False))
        try:
            hints = typing.get_type_hints(cls)
        except NameError as error:
            raise Unsampleable(f"{where}: type hints of {qualified(cls)}: {error}") from None
        names = attribute_names(cls) or []
        missing = [n for n in names if n not in hints]
        if missing:
            raise Unsampleable(f"{where}: {qualified(cls)} has no type hint for {missing}")
        values = {n: self.value(hints[n], f"{where}.{n}", typevars) for n in names}
        if dataclasses.is_dataclass(cls):
            for f in dataclasses.fields(cls):
                if not f.init:
                    raise Unsampleable(f"{where}.{f.name}: not an __init__ field")
                if hints[f.name] is bool and f.default is True:
                    values[f.name] = False
            return cls(**values)
        instance: object = object.__new__(cls)
        for name, value in values.items():
            object.__setattr__(instance, name, value)
        return instance


def sample_factory(cls: type) -> Callable[[], object]:
    """A function giving a new, equal, fully populated sample at each call."""
    explicit = EXPLICIT_SAMPLES.get(cls)
    if explicit is not None:
        return explicit
    Sampler().value(cls, cls.__qualname__, {})  # raises Unsampleable now, not mid-check
    return lambda: Sampler().value(cls, cls.__qualname__, {})


def default_of(f: dataclasses.Field[Any]) -> object:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def parts(value: object, path: str) -> Iterator[tuple[str, object]]:
    """Every value reachable from ``value``, with its path (records, containers, scalars)."""
    yield path, value
    names = attribute_names(type(value))
    if names is not None:
        for name in names:
            if hasattr(value, name):
                yield from parts(getattr(value, name), f"{path}.{name}")
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from parts(key, f"{path}.key({key!r})")
            yield from parts(item, f"{path}[{key!r}]")
    elif isinstance(value, list | tuple | set | frozenset):
        for n, item in enumerate(value):
            yield from parts(item, f"{path}[{n}]")


def blank_fields(sample: object, path: str) -> list[str]:
    """Fields of any record in the sample that hold their default: a copy that forgot such a
    field would still look right."""
    blank: list[str] = []
    for where, value in parts(sample, path):
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            for f in dataclasses.fields(value):
                default = default_of(f)
                if default is not dataclasses.MISSING and getattr(value, f.name) == default:
                    blank.append(f"{where}.{f.name} is its default {default!r}")
    return blank


# --- checks --------------------------------------------------------------------------------


def differences(expected: object, actual: object, path: str, copied: bool) -> list[str]:
    """Where ``actual`` differs from ``expected``, by value, recursively. ``copied``: actual
    is a snapshot copy, so the fields of ``RESET_ON_COPY`` must hold their reset value."""
    if type(expected) is not type(actual):
        return [f"{path}: a {type(actual).__name__} ({actual!r}) where {expected!r} was"]
    names = attribute_names(type(expected))
    if names is not None:
        found: list[str] = []
        for name in names:
            where = f"{path}.{name}"
            if not hasattr(actual, name):
                found.append(f"{where}: not set")
                continue
            reset = RESET_ON_COPY.get((type(expected), name)) if copied else None
            if reset is not None:
                if getattr(actual, name) != reset.value:
                    found.append(
                        f"{where}: {getattr(actual, name)!r}, not reset to {reset.value!r}"
                    )
                continue
            found += differences(getattr(expected, name), getattr(actual, name), where, copied)
        return found
    if isinstance(expected, dict) and isinstance(actual, dict):
        if list(expected) != list(actual):  # order too: pruning reads the oldest entry first
            return [f"{path}: keys {list(actual)!r} where {list(expected)!r} were"]
        return [
            problem
            for key in expected
            for problem in differences(expected[key], actual[key], f"{path}[{key!r}]", copied)
        ]
    if isinstance(expected, list | tuple) and isinstance(actual, list | tuple):
        if len(expected) != len(actual):
            return [f"{path}: {actual!r} where {expected!r} was"]
        return [
            problem
            for n, (e, a) in enumerate(zip(expected, actual, strict=True))
            for problem in differences(e, a, f"{path}[{n}]", copied)
        ]
    return [] if expected == actual else [f"{path}: {actual!r} where {expected!r} was"]


def is_frozen(value: object) -> bool:
    params = getattr(type(value), "__dataclass_params__", None)
    return params is not None and params.frozen


def mutable_parts(value: object, seen: set[int]) -> Iterator[object]:
    """Every mutable object reachable from ``value`` (not inside value records)."""
    if id(value) in seen or type(value) in VALUE_RECORDS:
        return
    seen.add(id(value))
    names = attribute_names(type(value))
    if names is not None:
        if not is_frozen(value):
            yield value
        for name in names:
            if hasattr(value, name):
                yield from mutable_parts(getattr(value, name), seen)
    elif isinstance(value, dict):
        yield value
        for item in value.values():
            yield from mutable_parts(item, seen)
    elif isinstance(value, list | set | bytearray):
        yield value
        for item in list(value):
            yield from mutable_parts(item, seen)
    elif isinstance(value, tuple | frozenset):
        for item in value:
            yield from mutable_parts(item, seen)


class Scribble:
    """What ``scribble`` writes: equal to nothing but itself."""

    def __repr__(self) -> str:
        return "<scribble>"


def scribble(value: object) -> None:
    """Overwrite every mutable part of ``value`` (lists, dicts, sets, mutable records)."""
    mark = Scribble()
    for part in list(mutable_parts(value, set())):
        if isinstance(part, dict):
            part.clear()
            part[mark] = mark
        elif isinstance(part, list):
            part[:] = [mark]
        elif isinstance(part, set):
            part.clear()
            part.add(mark)
        elif isinstance(part, bytearray):
            part[:] = b"\x00"
        else:
            for name in attribute_names(type(part)) or []:
                object.__setattr__(part, name, mark)


def copy_problems(factory: Callable[[], object], name: str) -> list[str]:
    """Everything wrong with ``copy.deepcopy`` of the samples ``factory`` builds."""
    twin = factory()
    problems = [f"sample not reproducible: {p}" for p in differences(twin, factory(), name, False)]
    sample = factory()
    snapshot = copy.deepcopy(sample)
    problems += [f"copy differs: {p}" for p in differences(twin, snapshot, name, True)]
    scribble(snapshot)
    problems += [
        f"changing the copy changed the original: {p}"
        for p in differences(twin, sample, name, False)
    ]
    sample = factory()
    snapshot = copy.deepcopy(sample)
    scribble(sample)
    problems += [
        f"changing the original changed the copy: {p}"
        for p in differences(twin, snapshot, name, True)
    ]
    return problems


# --- the tests -----------------------------------------------------------------------------


def test_every_class_with_a_hand_written_copy_is_found() -> None:
    assert UNIMPORTABLE == [], "modules that could not be scanned"
    found = {qualified(cls) for cls in STATE_CLASSES}
    assert found, "no class with __deepcopy__ found: the scan is broken"
    # A class the import scan cannot see (nested, built in a function) must not go unchecked.
    assert found == declared_in_source()


@pytest.mark.parametrize("cls", STATE_CLASSES, ids=qualified)
def test_snapshot_copy_keeps_every_field_and_shares_nothing_mutable(cls: type) -> None:
    factory = sample_factory(cls)  # Unsampleable fails the test: add an EXPLICIT_SAMPLES entry
    assert blank_fields(factory(), cls.__qualname__) == []
    assert copy_problems(factory, cls.__qualname__) == []


def test_declared_exceptions_name_real_fields_and_classes() -> None:
    for cls, name in RESET_ON_COPY:
        assert name in (attribute_names(cls) or []), f"{qualified(cls)}.{name}"
    for cls in EXPLICIT_SAMPLES:
        assert cls in STATE_CLASSES, f"{qualified(cls)} no longer has a hand-written copy"


# --- the check must be able to fail --------------------------------------------------------


@dataclass(slots=True)
class Facing:
    sku: str
    facings: int = 0


@dataclass(slots=True)
class ForgetfulShelf:
    """A copy written before ``reorder_point`` was added: it falls back to its default."""

    stock: dict[str, int] = field(default_factory=dict)
    reorder_point: int = 0

    def __deepcopy__(self, memo: dict[int, object]) -> ForgetfulShelf:
        return ForgetfulShelf(dict(self.stock))


@dataclass(slots=True)
class SharingShelf:
    """Shares its list of facings instead of copying it."""

    facings: list[Facing] = field(default_factory=list)
    as_of_ms: int = 0

    def __deepcopy__(self, memo: dict[int, object]) -> SharingShelf:
        return SharingShelf(self.facings, self.as_of_ms)


@dataclass(slots=True)
class ShallowAisle:
    """Copies its dict of facings but shares the mutable facings in it."""

    shelves: dict[str, Facing] = field(default_factory=dict)

    def __deepcopy__(self, memo: dict[int, object]) -> ShallowAisle:
        return ShallowAisle(dict(self.shelves))


@dataclass(slots=True)
class RebuildingAisle:
    """Rebuilds its nested record by hand and forgets one of its fields."""

    facing: Facing = field(default_factory=lambda: Facing(""))

    def __deepcopy__(self, memo: dict[int, object]) -> RebuildingAisle:
        return RebuildingAisle(Facing(self.facing.sku))


@dataclass(slots=True)
class Planogram:
    """Has a field no sample can be made for."""

    layout: Callable[[str], int]
    version: int = 0

    def __deepcopy__(self, memo: dict[int, object]) -> Planogram:
        return Planogram(self.layout, self.version)


def test_a_forgotten_field_is_reported() -> None:
    problems = copy_problems(sample_factory(ForgetfulShelf), "ForgetfulShelf")
    assert any(p.startswith("copy differs: ForgetfulShelf.reorder_point:") for p in problems)


def test_a_forgotten_field_of_a_nested_record_is_reported() -> None:
    problems = copy_problems(sample_factory(RebuildingAisle), "RebuildingAisle")
    assert any(p.startswith("copy differs: RebuildingAisle.facing.facings:") for p in problems)


def test_a_shared_container_is_reported_both_ways() -> None:
    problems = copy_problems(sample_factory(SharingShelf), "SharingShelf")
    assert any(p.startswith("changing the copy changed the original: Sharing") for p in problems)
    assert any(p.startswith("changing the original changed the copy: Sharing") for p in problems)


def test_a_shared_mutable_record_is_reported() -> None:
    problems = copy_problems(sample_factory(ShallowAisle), "ShallowAisle")
    assert any(p.startswith("changing the copy changed the original: Shallow") for p in problems)


def test_a_correct_copy_passes() -> None:
    assert copy_problems(sample_factory(Facing), "Facing") == []  # generic deepcopy


def test_a_class_without_an_automatic_sample_fails_rather_than_skips() -> None:
    with pytest.raises(Unsampleable, match=r"Planogram\.layout"):
        sample_factory(Planogram)


def test_a_default_in_the_sample_is_reported() -> None:
    assert blank_fields(ForgetfulShelf({"s": 1}), "shelf") == [
        "shelf.reorder_point is its default 0"
    ]


class SlottedBin:
    """Not a dataclass: sampled through its slots; its copy never sets ``counted_ms``."""

    __slots__ = ("counted_ms", "units")
    units: dict[str, int]
    counted_ms: int

    def __deepcopy__(self, memo: dict[int, object]) -> SlottedBin:
        twin = object.__new__(SlottedBin)
        twin.units = dict(self.units)
        return twin


def test_a_slot_left_unset_by_a_copy_is_reported() -> None:
    problems = copy_problems(sample_factory(SlottedBin), "SlottedBin")
    assert "copy differs: SlottedBin.counted_ms: not set" in problems
