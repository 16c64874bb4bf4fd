"""The production packages' import graph: no cycle (counting every import in the AST, including
function-level and TYPE_CHECKING ones) and dependencies that point one way."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("roomline", "sfu", "bridge", "roomline_agents", "appliance")
#: Which top-level package may import which (the direction of the layers).
ALLOWED = {
    "roomline": {"roomline"},
    "sfu": {"roomline", "sfu"},
    "bridge": {"roomline", "sfu", "bridge"},
    "roomline_agents": {"roomline", "sfu", "roomline_agents"},
    "appliance": set(PACKAGES),
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def build_graph() -> dict[str, set[str]]:
    modules = {
        module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py") if p.is_file()
    }
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for mod, path in modules.items():
        is_pkg = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    pkg_parts = mod.split(".") if is_pkg else mod.split(".")[:-1]
                    pkg_parts = pkg_parts[: len(pkg_parts) - (node.level - 1)]
                    base = ".".join(pkg_parts + ([base] if base else []))
                # ``from pkg import mod`` imports the submodule when there is one.
                targets = [
                    f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
                    for a in node.names
                ]
            for t in targets:
                while t and t not in modules:
                    t = t.rpartition(".")[0]
                if t and t != mod:
                    graph[mod].add(t)
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components with more than one member."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
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
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_graph_is_built_from_the_packages() -> None:
    graph = build_graph()
    assert "sfu.node" in graph and "bridge.worker.worker" in graph
    assert "roomline.errors" in graph["sfu.room"]


def test_no_import_cycle() -> None:
    assert find_cycles(build_graph()) == []


def test_cycle_detector_finds_a_cycle() -> None:
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == [["a", "b", "c"]]


def test_dependencies_point_one_way() -> None:
    wrong = [
        f"{mod} -> {dep}"
        for mod, deps in build_graph().items()
        for dep in deps
        if dep.split(".")[0] not in ALLOWED[mod.split(".")[0]]
    ]
    assert wrong == []


def test_worker_processes_do_not_import_main_process_code() -> None:
    """Bridge workers and agent jobs run apart from the main process: folders say so."""
    graph = build_graph()
    wrong = [
        f"{mod} -> {dep}"
        for mod, deps in graph.items()
        if mod.startswith(("bridge.worker", "roomline_agents.sdk", "roomline_agents.examples"))
        for dep in deps
        if dep.startswith(("bridge.service", "roomline_agents.service", "appliance"))
    ]
    assert wrong == []


def imports_of(folder: str) -> dict[str, set[str]]:
    """Absolute imports (module names as written) of every .py file under ``folder``."""
    found: dict[str, set[str]] = {}
    for path in sorted((ROOT / folder).rglob("*.py")):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names.add(node.module)
        found[str(path.relative_to(ROOT))] = names
    return found


def test_bench_and_harness_import_nothing_from_tests() -> None:
    """The benchmarks and the shared harness (servers, SIP/SDK/browser peers, audio checks) are
    independent of the test suite: they import ``roomline_harness`` and production code, never a
    module under ``tests/`` (fixtures live in conftest.py files and are never imported)."""
    wrong = [
        f"{path} -> {name}"
        for folder in ("bench", "roomline_harness")
        for path, names in imports_of(folder).items()
        for name in names
        if name.split(".")[0] == "tests"
    ]
    assert wrong == []


def test_tests_import_only_the_harness_from_outside_production() -> None:
    """A test module never imports another test module: shared helpers are roomline_harness.*."""
    wrong = [
        f"{path} -> {name}"
        for path, names in imports_of("tests").items()
        for name in names
        if name.split(".")[0] == "tests" and name != "tests"
    ]
    assert wrong == []


def test_production_code_does_not_import_tests_or_bench() -> None:
    wrong = [
        f"{path} -> {name}"
        for pkg in PACKAGES
        for path, names in imports_of(pkg).items()
        for name in names
        if name.split(".")[0] in ("tests", "bench", "roomline_harness")
    ]
    assert wrong == []
