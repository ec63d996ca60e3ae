"""The package's layout, read from the source with ``ast`` (nothing imported): no import circles,
hidden in functions or not, and the layers' directions (core below everything; sim only for the
CLI)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS_ABOVE_CORE = ("streams", "serving", "trainer", "encoders", "sim", "worlds", "cli")


def modules(root: Path = ROOT) -> dict[str, Path]:
    """``semirec.x.y`` -> its file (a package is its ``__init__.py``)."""
    out = {}
    for path in (root / "semirec").rglob("*.py"):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def imports(name: str, path: Path, known: dict[str, Path]) -> dict[str, int]:
    """The semirec modules ``name`` imports anywhere in its file (module level, functions,
    ``TYPE_CHECKING`` blocks), each with its first line. ``from pkg import sub`` is an import
    of the submodule ``pkg.sub``, not of ``pkg``'s ``__init__`` (whose attributes are not read)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]

    def owner(dotted: str) -> str | None:  # the module a dotted name lives in
        while dotted and dotted not in known:
            dotted = dotted.rpartition(".")[0]
        return dotted or None

    found: dict[str, int] = {}
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for target in targets:
            module = owner(target) if target.split(".")[0] == "semirec" else None
            if module and module != name:
                found.setdefault(module, node.lineno)
    return found


def graph(root: Path = ROOT) -> dict[str, dict[str, int]]:
    known = modules(root)
    return {name: imports(name, path, known) for name, path in sorted(known.items())}


def cycles(edges: dict[str, dict[str, int]]) -> list[list[str]]:
    """The strongly connected components of two or more modules (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    for start in edges:
        if start in index:
            continue
        work = [(start, iter(edges[start]))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(edges[child])))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    out.append(sorted(component))
    return out


def within(module: str, package: str) -> bool:
    return module == package or module.startswith(f"{package}.")


def describe(component: list[str], edges: dict[str, dict[str, int]]) -> str:
    return "; ".join(f"{a} -> {b} (line {line})" for a in component
                     for b, line in edges[a].items() if b in component)


@pytest.fixture(scope="module")
def edges() -> dict[str, dict[str, int]]:
    return graph()


def test_the_graph_sees_function_level_imports(edges) -> None:
    """The checker itself: a circle hidden in a function is found."""
    assert cycles({"a": {"b": 1}, "b": {"c": 3}, "c": {"a": 9}, "d": {"a": 2}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b": 1}, "b": {}}) == []
    # semirec.streams.ingest imports semirec.streams.dlq inside a function
    assert "semirec.streams.dlq" in edges["semirec.streams.ingest"]
    assert len(edges) > 100


def test_no_import_circles(edges) -> None:
    found = cycles(edges)
    assert not found, "\n".join(describe(c, edges) for c in found)


def test_only_the_cli_imports_the_simulator(edges) -> None:
    bad = [f"{a} -> {b}" for a, targets in edges.items() for b in targets
           if within(b, "semirec.sim") and not (within(a, "semirec.cli") or within(a, "semirec.sim"))]
    assert not bad


def test_core_imports_no_layer_above_it(edges) -> None:
    bad = [f"{a} -> {b}" for a, targets in edges.items() if within(a, "semirec.core")
           for b in targets if any(within(b, f"semirec.{layer}") for layer in LAYERS_ABOVE_CORE)]
    assert not bad


# package -> the semirec packages it may import (besides itself): docs/architecture.md
ALLOWED = {
    "semirec.serving": {"semirec.core"},
    "semirec.worlds": {"semirec.core"},
    "semirec.trainer.nets": {"semirec.core"},
}


def test_lower_layers_import_only_below_them(edges) -> None:
    bad = []
    for package, allowed in ALLOWED.items():
        for a, targets in edges.items():
            if not within(a, package):
                continue
            bad += [f"{a} -> {b}" for b in targets if within(b, "semirec") and not within(b, package)
                    and not any(within(b, ok) for ok in allowed)]
    assert not bad, bad


def test_the_wheel_ships_one_namespace() -> None:
    """Only `semirec` is installed; tests and benchmarks stay in the repository."""
    import tomllib

    find = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    assert find["include"] == ["semirec*"]
    packages = {p.parent.name for p in ROOT.glob("*/__init__.py")}
    assert packages == {"semirec", "tests", "benchmarks"}, packages
