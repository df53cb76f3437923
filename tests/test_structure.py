"""The shape of the source tree: no import cycle among the project's modules, no file over 500 lines.

Import cycles are found from the source (no import is executed). An edge A → B is an `import B` or
`from B import name` written anywhere in A: at module level, under `if TYPE_CHECKING:` (these **count**:
a cycle only the type checker sees is still a knot in the design) and inside functions too (a lazy
import only hides a cycle, as `ml.registry` ↔ `ml.architectures` and `ml.cam.base` ↔ its methods did).
`from B import c` where `B.c` is itself a module adds the edge A → B.c as well. The implicit import of a
module's parent packages is not counted (every `ml.cam.cam` imports `ml.cam` first; counting it would
flag every package whose `__init__` re-exports its submodules).
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("app", "ml")
MAX_LINES = 500


def module_files(root: Path = ROOT, packages: Iterable[str] = PACKAGES) -> dict[str, Path]:
    """Dotted module name → source file, for every .py file of the packages."""
    modules = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Module → the project modules it imports, anywhere in its source (see the module docstring)."""
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
                continue
            if not isinstance(node, ast.ImportFrom):
                continue
            base = node.module or ""
            if node.level:
                package = name.split(".") if is_package else name.split(".")[:-1]
                anchor = package[: len(package) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            targets.add(base)
            targets.update(f"{base}.{alias.name}" for alias in node.names)
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


def test_the_cycle_finder_sees_type_checking_lazy_relative_and_submodule_imports(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.b import B\n")
    (pkg / "b.py").write_text("from . import a\n")  # a ↔ b
    (pkg / "sub" / "__init__.py").write_text("from .c import C\n")  # a package re-exporting: no cycle
    (pkg / "sub" / "c.py").write_text("from pkg.sub.x import X\n")
    (pkg / "sub" / "x.py").write_text("X = 1\n")
    (pkg / "d.py").write_text("def f():\n    from pkg import g\n")  # lazy, but a cycle all the same
    (pkg / "g.py").write_text("import pkg.d\n")
    (pkg / "e.py").write_text("try:\n    import pkg.f\nexcept ImportError:\n    pass\n")
    (pkg / "f.py").write_text("from pkg import e\n")  # e ↔ f, through `from package import module`
    graph = import_graph(module_files(tmp_path, ["pkg"]))
    assert (
        graph["pkg.sub"] == {"pkg.sub.c"} and graph["pkg.sub.c"] == {"pkg.sub.x"} and graph["pkg.d"] == {"pkg", "pkg.g"}
    )
    assert cycles(graph) == [["pkg.a", "pkg.b"], ["pkg.d", "pkg.g"], ["pkg.e", "pkg.f"]]


def test_no_import_cycle_among_the_projects_modules() -> None:
    modules = module_files()
    assert {"app.main", "ml.registry", "ml.architectures", "ml.cam.base", "ml.data"} <= set(modules)
    graph = import_graph(modules)
    assert sum(len(t) for t in graph.values()) > 100, "the scan must see the project's imports"
    assert cycles(graph) == []


def test_no_source_file_is_over_500_lines() -> None:
    lengths = {
        str(p.relative_to(ROOT)): len(p.read_text(encoding="utf-8").splitlines()) for p in module_files().values()
    }
    assert len(lengths) > 40
    assert {path: n for path, n in lengths.items() if n > MAX_LINES} == {}
