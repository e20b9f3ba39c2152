"""The two packages (issue 20): the engine `musicgen/` imports neither Gradio nor the studio, and neither
package has an import cycle (module-level imports; call-time and TYPE_CHECKING imports are not edges)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_the_engine_loads_no_web_app() -> None:
    code = ("import musicgen, musicgen.cli, musicgen.serve, sys; "
            "print([m for m in sys.modules if m.startswith(('gradio', 'musicgen.studio'))])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]"


def module_imports(folder: Path) -> dict[str, set[str]]:
    """module -> the sibling modules (and, as "..", the parent package) it imports at module level."""
    mods = {p.stem for p in folder.glob("*.py")}
    graph = {}
    for p in folder.glob("*.py"):
        deps: set[str] = set()
        for node in ast.parse(p.read_text()).body:
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                deps |= {node.module.split(".")[0]} if node.module else {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 2:
                deps.add("..")
        graph[p.stem] = deps & (mods | {".."})
    return graph


@pytest.mark.parametrize("package", ["musicgen", "musicgen/studio"])
def test_no_import_cycles(package: str) -> None:
    graph = module_imports(ROOT / package)
    done: set[str] = set()

    def visit(m: str, path: tuple[str, ...]) -> None:
        assert m not in path, f"import cycle: {' -> '.join((*path, m))}"
        if m in done or m == "..":
            return
        for d in graph[m]:
            visit(d, (*path, m))
        done.add(m)

    for m in graph:
        visit(m, ())


def test_the_engine_never_imports_the_studio() -> None:
    for p in (ROOT / "musicgen").glob("*.py"):
        for node in ast.walk(ast.parse(p.read_text())):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else (
                [a.name for a in node.names] if isinstance(node, ast.Import) else [])
            assert not any("studio" in n or n.startswith("gradio") for n in names), (p.name, names)
