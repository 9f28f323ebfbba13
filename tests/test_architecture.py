"""The package's import graph (docs/ARCHITECTURE.md, "Dependencies"), read from the source with ast.

Every import counts, also those inside functions (a lazy import is still a dependency): the top-level parts
of megadrp (megadrp.X) must form no cycle, and no module computes the name of a module to import, except the
CLI's dispatch table and a package ``__init__``'s lazy ``__getattr__`` loader.
"""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "megadrp"


def _modules() -> dict[str, ast.Module]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    return out


MODULES = _modules()


def _is_package(name: str) -> bool:
    return (PACKAGE.parent / Path(*name.split(".")) / "__init__.py").is_file()


def _imported(module: str, tree: ast.Module) -> set[str]:
    """The megadrp modules ``module`` imports anywhere in its body (relative imports resolved)."""
    base = module.split(".") if _is_package(module) else module.split(".")[:-1]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            target = node.module or ""
            if node.level:
                target = ".".join(base[:len(base) - node.level + 1] + ([target] if target else []))
            found.add(target)
            found.update(f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in MODULES)
    return {m for m in found if m == "megadrp" or m.startswith("megadrp.")}


def _part(module: str) -> str:
    return module.split(".")[1] if "." in module else "megadrp"


def part_graph() -> dict[str, dict[str, list[str]]]:
    """{part: {imported part: [importing modules]}} between distinct top-level parts."""
    graph: dict[str, dict[str, list[str]]] = {}
    for module, tree in MODULES.items():
        src = _part(module)
        for dep in _imported(module, tree):
            dst = _part(dep)
            if dst not in (src, "megadrp"):
                graph.setdefault(src, {}).setdefault(dst, []).append(module)
    return graph


def _cycle(graph: dict[str, dict]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    path: list[str] = []

    def visit(node):
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, {})):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_reader_sees_every_import():
    """The graph is real: known edges, lazy and relative imports included, are found."""
    graph = part_graph()
    assert "masks" in graph["trainer"]          # a function-level import (trainer/build.py, methods)
    assert "trainer" in graph["methods"] and "methods" in graph["train"]
    assert _imported("megadrp.dro", MODULES["megadrp.dro"]) >= {"megadrp.dro.tracker"}  # `from .tracker`


def test_no_cycle_between_top_level_parts():
    graph = part_graph()
    cycle = _cycle(graph)
    where = "" if not cycle else "; ".join(
        f"{a} -> {b} in {sorted(set(graph[a][b]))}" for a, b in zip(cycle, cycle[1:]))
    assert cycle is None, f"import cycle between parts {' -> '.join(cycle)}: {where}"


def module_graph() -> dict[str, dict[str, list[str]]]:
    """{module: {imported module: [module]}} between megadrp modules. A module's import of a package it sits in
    (``from megadrp.masks import MaskSet`` inside megadrp/masks/) is left out: the package's ``__init__`` only
    re-exports its submodules, so that edge is no dependency of the module on another concept."""
    graph: dict[str, dict[str, list[str]]] = {}
    for module, tree in MODULES.items():
        for dep in _imported(module, tree):
            if dep != module and dep in MODULES and not module.startswith(dep + "."):
                graph.setdefault(module, {})[dep] = [module]
    return graph


def test_no_cycle_between_modules():
    """Also inside a part: two modules that import each other (even lazily, inside functions) are one concept
    split in two, or a concept in the wrong one; a function-level import does not hide the cycle."""
    graph = module_graph()
    cycle = _cycle(graph)
    assert cycle is None, f"import cycle between modules {' -> '.join(cycle)}"


def test_the_module_reader_finds_a_function_level_cycle():
    graph = {"a": {"b": ["a"]}, "b": {"c": ["b"]}, "c": {"a": ["c"]}}
    assert _cycle(graph) == ["a", "b", "c", "a"]
    assert "megadrp.model.lazy_weights" in module_graph()["megadrp.model.hf_io"]  # a real edge is seen


def _computed_imports(tree: ast.Module) -> list[tuple[int, str]]:
    """(line, enclosing function) of every importlib.import_module / __import__ call."""
    out = []

    def walk(node, func):
        for child in ast.iter_child_nodes(node):
            name = child.name if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) else func
            if isinstance(child, ast.Call):
                f = child.func
                called = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
                if called in ("import_module", "__import__"):
                    out.append((child.lineno, func))
            walk(child, name)

    walk(tree, "<module>")
    return out


def test_no_computed_imports_outside_the_cli_and_lazy_package_loaders():
    offenders = []
    for module, tree in MODULES.items():
        for line, func in _computed_imports(tree):
            lazy_loader = _is_package(module) and func == "__getattr__"
            if module != "megadrp.cli" and not lazy_loader:
                offenders.append(f"{module}:{line} (in {func})")
    assert not offenders, f"computed imports hide dependencies from readers and from this test: {offenders}"


def test_the_package_imports_nothing_outside_it():
    """experiments/, tools/ and tests/ live outside the installed package (the wheel ships only megadrp): they may
    import megadrp, never the other way round."""
    outside = []
    for module, tree in MODULES.items():
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            outside += [f"{module}: {n}" for n in names if n.split(".")[0] in ("experiments", "tests", "tools")]
    assert not outside, f"the installed package imports code it does not ship: {outside}"
