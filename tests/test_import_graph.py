"""The package's modules import each other without a circle (issue 20).

Every ``import`` statement counts, at module level or inside a function: a circle hidden in a
function still means no module of it can be read, tested or replaced on its own. A module's
implicit import of the packages above it (``tailshift.methods.csa`` runs ``tailshift/methods/__init__``
first) is not an edge; everything else that runs a tailshift module is.
"""
from __future__ import annotations

import ast
import textwrap
from pathlib import Path

import tailshift

SOURCE = Path(tailshift.__file__).parent


def module_names(root: Path, package: str) -> dict[str, Path]:
    """Dotted name -> file of every module of the package at ``root`` (a package is its __init__.py)."""
    names = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join((package, *parts))] = path
    return names


def _ancestors(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def _imported(node: ast.AST, importer: str, is_package: bool) -> list[str]:
    """The dotted names an import statement runs (its modules, and ``from X import name`` as X.name)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if node.level:  # relative: from the importer's package, up level - 1 more
        base = importer.split(".")
        base = base if is_package else base[:-1]
        base = base[:len(base) - (node.level - 1)]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module
    return [target] + [f"{target}.{alias.name}" for alias in node.names]


def import_graph(root: Path, package: str) -> dict[str, set[str]]:
    """Module -> the package's modules it imports anywhere in its file (module or function level)."""
    modules = module_names(root, package)
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        implicit = set(_ancestors(name))
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            for target in _imported(node, name, path.name == "__init__.py"):
                # the module itself and the packages above it, as far as they are the package's modules
                for runs in (*_ancestors(target), target):
                    if runs in modules and runs != name and runs not in implicit:
                        graph[name].add(runs)
    return graph


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """The components of more than one module (Tarjan), each sorted; a circle lies within one."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def one_circle(graph: dict[str, set[str]], component: list[str]) -> list[str]:
    """A shortest circle through the component's first module, as the modules along it."""
    start, members = component[0], set(component)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        following = []
        for v in frontier:
            for w in sorted(graph[v] & members):
                if w == start:
                    return paths[v] + [start]
                if w not in paths:
                    paths[w] = paths[v] + [w]
                    following.append(w)
        frontier = following
    raise AssertionError(f"{component} is not strongly connected")


def circles_report(graph: dict[str, set[str]]) -> str:
    return "\n".join(f"{len(c)} modules import each other: {', '.join(c)}\n  e.g. {' -> '.join(one_circle(graph, c))}"
                     for c in strongly_connected(graph))


def test_no_module_of_tailshift_is_in_an_import_circle():
    graph = import_graph(SOURCE, "tailshift")
    assert len(graph) > 50 and "tailshift.methods.csa" in graph["tailshift.methods"]  # the walk saw the package
    report = circles_report(graph)
    assert not report, "import circles:\n" + report


def _write_package(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / "pkg" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root / "pkg"


def test_a_circle_through_a_function_level_import_is_found(tmp_path):
    root = _write_package(tmp_path, {
        "__init__.py": "",
        "config.py": "from .sub.method import Method\n",
        "sub/__init__.py": "from . import method\n",  # a package importing its module: no circle by itself
        "sub/method.py": """
            import torch  # a third-party import is never an edge

            def build():
                from ..config import load   # hidden in a function: still an edge
        """,
        "engine.py": "import pkg.config\nfrom pkg import sub\n",
    })
    graph = import_graph(root, "pkg")
    assert graph["pkg.sub.method"] == {"pkg.config"}  # not its parent package pkg.sub
    assert graph["pkg.engine"] == {"pkg.config", "pkg.sub"}  # pkg itself runs before any of its modules
    assert strongly_connected(graph) == [["pkg.config", "pkg.sub", "pkg.sub.method"]]
    report = circles_report(graph)
    assert "3 modules import each other: pkg.config, pkg.sub, pkg.sub.method" in report
    assert "e.g. pkg.config -> pkg.sub.method -> pkg.config" in report


def test_a_package_importing_its_own_modules_is_no_circle(tmp_path):
    root = _write_package(tmp_path, {
        "__init__.py": "from .a import A\nfrom . import b\n",
        "a.py": "from .b import B\n",
        "b.py": "B = 1\n",
    })
    graph = import_graph(root, "pkg")
    assert graph == {"pkg": {"pkg.a", "pkg.b"}, "pkg.a": {"pkg.b"}, "pkg.b": set()}
    assert strongly_connected(graph) == []
