"""The layering the project promises, checked mechanically.

* Library packages never import the CLI or display libraries (the CLI is a thin layer on top).
* Pure logic (catalog, planner) does no device I/O.
* `migctl --help` and the CLI module load without OR-Tools, pydantic, rich or pandas (lazy imports).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "migctl"
LIBRARY = ["catalog", "sim", "device", "config", "reconcile", "planner", "jobs", "integrations", "observe"]
DISPLAY = {"typer", "rich", "click", "migctl.cli"}
DEVICE_IO = {"pynvml", "migctl.device", "migctl.sim", "subprocess"}


def imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def offending(pkgs: list[str], banned: set[str]) -> list[str]:
    bad = []
    for pkg in pkgs:
        for f in sorted((SRC / pkg).rglob("*.py")):
            for name in imports(f):
                if any(name == b or name.startswith(b + ".") for b in banned):
                    bad.append(f"{f.relative_to(SRC)} imports {name}")
    return bad


def test_library_does_not_import_cli_or_display():
    assert offending(LIBRARY, DISPLAY) == []


def test_pure_logic_does_no_device_io():
    assert offending(["catalog", "planner"], DEVICE_IO) == []


def test_cli_startup_is_lean():
    code = (
        "import sys, migctl.cli.main as m; m.app; "
        "heavy = [x for x in ('ortools', 'pydantic', 'rich', 'pandas', 'numpy') if x in sys.modules]; "
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == ""
