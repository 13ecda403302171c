"""The package's import graph: no cycles (module level or inside functions), no private names.

The graph is read from the source with :mod:`ast`, so an import inside a function or
under ``if TYPE_CHECKING:`` counts as much as one at the top of a module. An edge goes
from a module to every package module it names (``from pkg import sub`` names the
submodule ``pkg.sub``); the implicit import of a parent package's ``__init__`` is not
an edge (it is what re-exports look like).
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

PACKAGE = "wsi_saliency"
ROOT = Path(__file__).resolve().parents[1] / PACKAGE


def module_files(root: Path = ROOT) -> dict[str, Path]:
    """Module name -> file for every ``.py`` file of the package."""
    out: dict[str, Path] = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _resolve(module: str, node: ast.ImportFrom, is_package: bool) -> str:
    if node.level == 0:
        return node.module or ""
    base = module.split(".")
    if not is_package:
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(module: str, path: Path, modules: Iterable[str]) -> dict[str, list[str]]:
    """Package modules ``module`` imports, each with the names it takes from them."""
    known = set(modules)
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    out: dict[str, list[str]] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in known:
                    out.setdefault(alias.name, [])
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(module, node, path.name == "__init__.py")
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                if sub in known:
                    out.setdefault(sub, [])
                elif target in known:
                    out.setdefault(target, []).append(alias.name)
    out.pop(module, None)
    return out


def import_graph(root: Path = ROOT) -> dict[str, dict[str, list[str]]]:
    """``{module: {imported module: [names taken]}}`` over the whole package."""
    files = module_files(root)
    return {m: imports_of(m, p, files) for m, p in files.items()}


def find_cycles(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    counter = 0

    def visit(v: str) -> None:
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(cycles)


def test_the_cycle_finder_finds_cycles() -> None:
    assert find_cycles({"a": ["b"], "b": ["c"], "c": ["a"], "d": ["a"]}) == [["a", "b", "c"]]
    assert find_cycles({"a": ["b"], "b": [], "c": ["a", "b"]}) == []


def test_the_graph_sees_imports_inside_functions(tmp_path: Path) -> None:
    pkg = tmp_path / PACKAGE
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from wsi_saliency.sub import b\n")
    (pkg / "sub" / "b.py").write_text("def f():\n    from wsi_saliency.a import g\n")
    (pkg / "sub" / "c.py").write_text("from . import b\nfrom .b import _hidden\n")
    graph = import_graph(pkg)
    assert graph["wsi_saliency.sub.b"] == {"wsi_saliency.a": ["g"]}
    assert graph["wsi_saliency.sub.c"] == {"wsi_saliency.sub.b": ["_hidden"]}
    assert find_cycles(graph) == [["wsi_saliency.a", "wsi_saliency.sub.b"]]


def test_the_package_has_no_import_cycle() -> None:
    graph = import_graph()
    assert "wsi_saliency.batch.local" in graph  # the walk found the package
    cycles = find_cycles(graph)
    assert cycles == [], f"import cycles: {cycles}"


def test_no_module_imports_a_private_name_of_another() -> None:
    offenders = {
        f"{module} <- {target}": private
        for module, targets in import_graph().items()
        for target, names in targets.items()
        if (private := [n for n in names if n.startswith("_") and not n.startswith("__")])
    }
    assert offenders == {}, f"private names imported across modules: {offenders}"
