"""The package's import graph has no cycle.

Every ``import`` statement in ``bandsolve/`` (at module level and inside functions, found
with :mod:`ast` without importing anything) is an edge from the importing module to the
``bandsolve`` module it names; ``from pkg import name`` is an edge to ``pkg.name`` when that
is a module, else to ``pkg``. A module importing its own package's ``__init__`` implicitly
(Python runs parents first) is not an edge. The test fails on any cycle, naming it.
"""

import ast
from pathlib import Path

import bandsolve

ROOT = Path(bandsolve.__file__).resolve().parent
PACKAGE = "bandsolve"


def _module_names():
    names = {}
    for path in ROOT.rglob("*.py"):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts = parts[:-1]
        names[".".join(parts)] = (path, is_package)
    return names


def _resolve(module, is_package, level, target):
    """The absolute name of a relative import ``level`` dots up from ``module``."""
    if level == 0:
        return target
    base = module.split(".")
    if not is_package:
        base = base[:-1]
    base = base[:len(base) - (level - 1)]
    return ".".join(base + ([target] if target else []))


def import_graph():
    """``{module: {imported bandsolve modules}}`` over every module of the package."""
    modules = _module_names()
    graph = {}
    for module, (path, is_package) in modules.items():
        edges = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                source = _resolve(module, is_package, node.level, node.module or "")
                targets = [f"{source}.{alias.name}" if f"{source}.{alias.name}" in modules
                           else source for alias in node.names]
            else:
                continue
            edges.update(t for t in targets if t in modules and t != module)
        graph[module] = edges
    return graph


def find_cycle(graph):
    """One cycle as a list of modules (first repeated at the end), or None."""
    state = {}  # module -> "open" while on the stack, "done" after

    def visit(module, stack):
        state[module] = "open"
        stack.append(module)
        for target in sorted(graph.get(module, ())):
            if state.get(target) == "open":
                return stack[stack.index(target):] + [target]
            if target not in state:
                cycle = visit(target, stack)
                if cycle:
                    return cycle
        stack.pop()
        state[module] = "done"
        return None

    for module in sorted(graph):
        if module not in state:
            cycle = visit(module, [])
            if cycle:
                return cycle
    return None


def test_the_graph_sees_function_level_imports():
    # the walk must find the lazy imports too, or the test below could not fail
    graph = import_graph()
    assert "bandsolve.smnn" in graph and graph["bandsolve.smnn"]
    assert any("bandsolve.gpu" in target for edges in graph.values() for target in edges)


def test_find_cycle_detects_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_in_bandsolve():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)



def _imports_between(graph, source, target):
    """The edges from modules in package ``source`` to modules in package ``target``."""
    return sorted((m, t) for m, edges in graph.items() if m.startswith(source + ".")
                  for t in edges if t == target or t.startswith(target + "."))


def test_layers_only_import_downwards():
    # kernels/ is the bottom layer; cpu/ and gpu/ build on it and never import each other;
    # none of the three imports the public modules that dispatch to the backends
    # (bandsolve.banded is allowed: its BlockBanded/BlockCholesky are the host driver's
    # return types and it imports only cpu/banded.py, so no cycle can form)
    graph = import_graph()
    assert _imports_between(graph, "bandsolve.gpu", "bandsolve.kernels")  # the test can see it
    assert _imports_between(graph, "bandsolve.gpu", "bandsolve.cpu") == []
    assert _imports_between(graph, "bandsolve.cpu", "bandsolve.gpu") == []
    assert _imports_between(graph, "bandsolve.kernels", "bandsolve.cpu") == []
    assert _imports_between(graph, "bandsolve.kernels", "bandsolve.gpu") == []
    for layer in ("bandsolve.kernels", "bandsolve.cpu", "bandsolve.gpu"):
        for public in ("bandsolve.smnn", "bandsolve.dask", "bandsolve.apps", "bandsolve.tangent"):
            assert _imports_between(graph, layer, public) == [], (layer, public)
