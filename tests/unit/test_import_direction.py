"""Imports run one way: app → flows → connectors / state → domain → base.

Read from the source (every ``import``, also inside functions), not from what happens to be
loaded, so a lazy import the wrong way fails here too. The domain imports only the standard
library besides ``base`` and the numerical libraries of the experiment statistics: it is what
can be read and tested without Kafka, Redis or Bytewax.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

#: package → the packages of ours it may import (itself included).
MAY_IMPORT: dict[str, frozenset[str]] = {
    "base": frozenset({"base"}),
    "domain": frozenset({"domain", "base"}),
    "connectors": frozenset({"connectors", "domain", "base"}),
    "state": frozenset({"state", "domain", "base"}),
    "flows": frozenset({"flows", "connectors", "state", "domain", "base"}),
    "omnistream": frozenset({"omnistream", "flows", "connectors", "state", "domain", "base"}),
    "examples": frozenset(),
}
OURS = frozenset(MAY_IMPORT)
#: third-party packages ``base`` may use (configuration files, metric definitions).
BASE_THIRD_PARTY = frozenset({"yaml", "prometheus_client"})
#: third-party packages the domain may use: pure numerical work and parsing, no I/O and no
#: clock (the experiment report's Wald test, ``domain.experiments``; event times read in C,
#: ``domain.timeparse``).
DOMAIN_THIRD_PARTY = frozenset({"numpy", "statsmodels", "ciso8601"})
#: standard modules the domain may not use: time comes in with the event, configuration is
#: passed in, and the domain does no I/O of its own (DESIGN.md, "Layout").
DOMAIN_FORBIDDEN_STDLIB = frozenset(
    {"time", "os", "sys", "threading", "socket", "subprocess", "asyncio", "random", "logging"}
)
#: clock reads the domain may not make, whatever the import (``datetime.now()`` …).
CLOCK_READS = frozenset({"now", "utcnow", "today", "time_ns", "monotonic", "perf_counter"})


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in a file."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the file's package
                package = path.relative_to(ROOT).parent.parts
                base = list(package[: len(package) - node.level + 1])
            else:
                base = []
            if node.module:
                found.append((node.lineno, ".".join([*base, node.module])))
            else:  # ``from . import x``: the names are modules
                found += [(node.lineno, ".".join([*base, a.name])) for a in node.names]
    return sorted(found)


def violations(package: str) -> list[str]:
    allowed = MAY_IMPORT[package]
    problems = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for line, module in imported_modules(path):
            top = module.split(".")[0]
            where = f"{path.relative_to(ROOT)}:{line}: imports {module}"
            if top in OURS and top not in allowed:
                problems.append(f"{where} ({package} may import {sorted(allowed) or 'none'})")
            elif top not in OURS and top != "__future__":
                stdlib = top in sys.stdlib_module_names
                if package == "domain" and not stdlib and top not in DOMAIN_THIRD_PARTY:
                    problems.append(f"{where} (the domain uses the standard library only)")
                if package == "domain" and top in DOMAIN_FORBIDDEN_STDLIB:
                    problems.append(f"{where} (the domain reads no clock and does no I/O)")
                if package == "base" and not stdlib and top not in BASE_THIRD_PARTY:
                    problems.append(f"{where} (base may use {sorted(BASE_THIRD_PARTY)})")
        if package == "domain":
            problems += [
                f"{path.relative_to(ROOT)}:{line}: reads the clock ({name}())"
                for line, name in clock_reads(path)
            ]
    return problems


def clock_reads(path: Path) -> list[tuple[int, str]]:
    """Calls such as ``datetime.now()`` or ``date.today()``: attribute calls named like a
    clock read."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    return [
        (node.lineno, node.func.attr)
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr in CLOCK_READS
    ]


@pytest.mark.parametrize("package", sorted(MAY_IMPORT))
def test_imports_run_one_way(package: str) -> None:
    assert (ROOT / package).is_dir()
    assert violations(package) == []


def test_the_check_sees_a_wrong_import(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The check itself: a domain module importing a flow, a connector lazily, Redis, or a
    relative import out of the package is caught."""
    domain = tmp_path / "domain"
    domain.mkdir()
    (domain / "bad.py").write_text(
        "from flows import stock_pool\n"
        "def f():\n    import connectors.decode\n"
        "import redis\n"
        "from .sibling import x\n"
        "from .. import omnistream\n"
        "import time\n"
        "from datetime import datetime\n"
        "def g():\n    return datetime.now()\n",
        encoding="utf-8",
    )
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    found = violations("domain")
    assert [p.split(": ", 1)[1].split(" (")[0] for p in found] == [
        "imports flows",
        "imports connectors.decode",
        "imports redis",
        "imports omnistream",
        "imports time",
        "reads the clock",
    ]
