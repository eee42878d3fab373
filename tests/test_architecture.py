"""The layering of ARCHITECTURE.md, checked on the imports themselves (those inside functions included).

faces (timemachine/cli with the worker's command, ui) -> pipeline -> library -> ops; the foundation (errors, env, fs,
settings) is importable from every layer and imports nothing of timemachine but errors.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from conftest import REPO_ROOT

PACKAGE = REPO_ROOT / "timemachine"
#: What a face may import of the project.
FACE_ALLOWED = ("timemachine.pipeline", "timemachine.settings", "timemachine.errors", "timemachine.env",
                "timemachine.cli", "timemachine.__version__")
FOUNDATION = ("errors", "env", "fs", "settings")


def _imports(path: Path) -> list[str]:
    """Every module a file imports (``from a.b import c`` gives 'a.b.c' and 'a.b'; relative imports resolved)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                package = path.relative_to(REPO_ROOT).with_suffix("").parts[:-node.level]
                module = ".".join(package + ((module,) if module else ()))
            found.extend(f"{module}.{alias.name}" for alias in node.names)
    return found


#: The UI's modules, imported by plain name (Streamlit runs ui/app.py as a script).
UI_MODULES = tuple(p.stem for p in (REPO_ROOT / "ui").glob("*.py"))


def _project_imports(path: Path) -> list[str]:
    return [name for name in _imports(path) if name.split(".")[0] in ("timemachine", "stylegan_ops") + UI_MODULES]


def _faces() -> list[Path]:
    """The CLI (the queue worker's command included) and the UI."""
    return sorted((PACKAGE / "cli").glob("*.py")) + sorted((REPO_ROOT / "ui").glob("*.py"))


@pytest.mark.parametrize("path", _faces(), ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_faces_import_only_the_pipeline_settings_errors_and_environment(path):
    bad = [name for name in _project_imports(path)
           if name.startswith(("timemachine", "stylegan_ops")) and not name.startswith(FACE_ALLOWED)
           and name != "timemachine"]
    assert not bad, f"{path.name} reaches below the pipeline: {bad}"


def _library_modules() -> list[Path]:
    skip = {PACKAGE / "cli", PACKAGE / "pipeline"}
    return [p for p in sorted(PACKAGE.rglob("*.py"))
            if not any(p.is_relative_to(s) for s in skip) and p.name != "__main__.py"]


@pytest.mark.parametrize("path", _library_modules(), ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_the_library_never_imports_the_pipeline_or_a_face(path):
    bad = [name for name in _project_imports(path)
           if name.startswith(("timemachine.pipeline", "timemachine.cli")) or name.split(".")[0] in UI_MODULES]
    assert not bad, f"{path.name} imports upwards: {bad}"


@pytest.mark.parametrize("name", FOUNDATION)
def test_the_foundation_imports_nothing_of_timemachine_but_errors(name):
    path = PACKAGE / f"{name}.py"
    bad = [n for n in _project_imports(path) if not n.startswith("timemachine.errors")]
    assert not bad, f"{name}.py imports {bad}"


def test_the_ops_never_import_timemachine():
    for path in sorted((REPO_ROOT / "stylegan_ops").rglob("*.py")):
        assert not [n for n in _project_imports(path) if n.startswith("timemachine")], path


def test_only_the_environment_module_reads_the_environment():
    """TIMEMACHINE_* variables are read once, at the edge, through timemachine.env."""
    readers = []
    for path in sorted(PACKAGE.rglob("*.py")) + sorted((REPO_ROOT / "ui").glob("*.py")):
        if path == PACKAGE / "env.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Attribute) and node.attr in ("environ", "getenv") and \
                    isinstance(node.value, ast.Name) and node.value.id == "os":
                readers.append(f"{path.relative_to(REPO_ROOT)}:{node.lineno}")
    assert not readers, f"os.environ read outside timemachine/env.py: {readers}"


def _raised_texts(path: Path) -> list[tuple[int, str]]:
    """The string pieces of every ``raise`` in a file (f-strings' literal parts included)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Raise) and node.exc is not None:
            for part in ast.walk(node.exc):
                if isinstance(part, ast.Constant) and isinstance(part.value, str):
                    found.append((node.lineno, part.value))
    return found


def test_library_errors_name_no_command_line_flag_or_command():
    """Errors below the faces speak to whoever is in front: remedies are structured, the faces word them."""
    import re

    flag = re.compile(r"(?<![\w-])--[a-z][a-z-]+|\btimemachine (run|project|render|age-vector|weights|doctor|ui)\b")
    offenders = [f"{path.relative_to(REPO_ROOT)}:{line}: {text!r}"
                 for path in _library_modules() + sorted((PACKAGE / "pipeline").glob("*.py"))
                 for line, text in _raised_texts(path) if flag.search(text)]
    assert not offenders, offenders
