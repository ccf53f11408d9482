"""No import cycles among the project's modules, counting the imports inside functions too.

An import inside a function only hides a cycle: the two modules still need each other, and
which one may be loaded first depends on who calls what when. This test reads the source with
`ast` (nothing is imported, no model is loaded) and walks the module graph.

The implicit edge from a submodule to its package (`import store.db` runs `store/__init__.py`
first) is left out on purpose: a package's `__init__` re-exporting its submodules (store/
does: `from store.db import open_db`) would otherwise be a "cycle" with every submodule, and
Python loads that order without trouble. An explicit `from store import open_db` inside a
submodule of `store` is still an edge to `store` and would be caught. Imports by a name built
at run time (assistant/cli.py's `importlib.import_module` of a command's module) are not seen.
"""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("assistant", "learning", "store")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules() -> dict[str, Path]:
    return {_module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def _resolve_relative(module: str, is_package: bool, level: int, target: str | None) -> str:
    base = module.split(".")
    if not is_package:
        base = base[:-1]
    base = base[:len(base) - (level - 1)] if level > 1 else base
    return ".".join(base + ([target] if target else []))


def imported_modules(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules `name` imports anywhere in its source (top level and in functions).

    `import a.b.c` -> a.b.c; `from pkg import name` -> pkg.name when that is a module file,
    else pkg."""
    found = set()
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = (_resolve_relative(name, is_package, node.level, node.module) if node.level
                    else node.module)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in modules else base)
    return {m for m in found if m in modules and m != name}


def import_graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {name: imported_modules(name, path, modules) for name, path in modules.items()}


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (as a path a -> ... -> a) per strongly connected component that has one."""
    index, low, on_stack, stack, components = {}, {}, set(), [], []

    def strongconnect(v):  # Tarjan; the graph is a few dozen modules, recursion is fine
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                strongconnect(w)
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
                components.append(set(component))

    for v in sorted(graph):
        if v not in index:
            strongconnect(v)
    return [_cycle_path(graph, component) for component in components]


def _cycle_path(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    """The shortest cycle through the component's first module (breadth-first)."""
    start = min(component)
    previous = {start: None}
    queue = [start]
    while queue:
        v = queue.pop(0)
        for w in sorted(graph[v] & component):
            if w == start:
                path = [v]
                while previous[path[-1]] is not None:
                    path.append(previous[path[-1]])
                return path[::-1] + [start]
            if w not in previous:
                previous[w] = v
                queue.append(w)
    raise AssertionError(f"no cycle through {start} in {sorted(component)}")


def test_the_graph_sees_imports_inside_functions():
    graph = import_graph()
    assert "store.text" in graph["store.migrations"]  # a top-level import
    assert "learning.augment" in graph["learning.train"]  # one inside a function
    assert "store" in graph["assistant.memory"]  # `from store import open_db`: the package


def test_find_cycles_reports_the_path():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycles(graph) == [["a", "b", "c", "a"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    graph = import_graph()
    cycles = find_cycles(graph)
    assert not cycles, "import cycles (imports inside functions count too):\n" + "\n".join(
        " -> ".join(cycle) for cycle in cycles)


def reachable(graph: dict[str, set[str]], module: str) -> set[str]:
    """Every project module `module` imports, directly or through others."""
    seen, todo = set(), [module]
    while todo:
        for m in graph[todo.pop()] - seen:
            seen.add(m)
            todo.append(m)
    return seen


def test_the_store_imports_nothing_above_it():
    """store/ is the lowest layer (store/__init__.py): assistant/ and learning/ import it, never
    the other way round."""
    graph = import_graph()
    above = {m: sorted(d for d in deps if not d.startswith("store"))
             for m, deps in graph.items() if m.split(".")[0] == "store"}
    assert not {m: d for m, d in above.items() if d}


@pytest.mark.parametrize("recall", ["assistant.memory", "assistant.scope", "assistant.supersede"])
def test_recall_and_routing_need_no_learning_module(recall):
    """Finding a correction (memory), routing to an adapter or expert (scope) and linking an
    update (supersede) are the serving side's own: learning/ may import them, not they it."""
    assert not sorted(m for m in reachable(import_graph(), recall) if m.split(".")[0] == "learning")


# What learning/ may import from assistant/ (test_allowed_import_directions): the serving side's
# public modules, each for a reason, and nothing else.
LEARNING_MAY_IMPORT = {
    "assistant.config",  # defaults (the system prompt) and the server's Config
    "assistant.errors",  # the errors both sides raise and catch
    "assistant.embedders",  # the sentence embedder recall and routing use
    "assistant.questions",  # the generic prompts (self-replay, reframings)
    "assistant.matching",  # unit_rows and the Embedder interface, as recall matches
    "assistant.language",  # the rules a scope's records are computed by (learning/scopes.py), as routing reads them
    "assistant.model",  # the served model (ServedModel, resolve_model, pick_device, adapter checks)
    "assistant.serving",  # build_served: the model, reranker and scope wired as the chat wires them
}


def layering_violations(graph: dict[str, set[str]]) -> dict[str, list[str]]:
    """Per module, the imports against the layering (test_allowed_import_directions)."""
    wrong = {}
    for module, deps in graph.items():
        layer = module.split(".")[0]
        if layer == "store":
            bad = [d for d in deps if d.split(".")[0] in ("assistant", "learning")]
        elif layer == "learning":
            bad = [d for d in deps if d.split(".")[0] == "assistant" and d not in LEARNING_MAY_IMPORT]
        else:
            bad = []
        if bad:
            wrong[module] = sorted(bad)
    return wrong


def test_allowed_import_directions():
    """The layers, lowest first: store/ imports neither assistant/ nor learning/ (files and the
    database only; an adapter directory's layout and meta.json are store/manifest.py's);
    learning/ imports from assistant/ only LEARNING_MAY_IMPORT: config, errors, embedders,
    questions, matching, language, model and serving, the public faces of the serving side, never its
    internals (rerank, memory, chat, the UI, the API, the split-out parts of model.py); assistant/
    may import learning/ (the UI and the CLI start and review learning cycles)."""
    wrong = layering_violations(import_graph())
    assert not wrong, f"imports against the layering (see the docstring): {wrong}"


def test_the_layering_check_sees_a_wrong_import():
    graph = {"store.db": {"assistant.chat", "store.text"}, "learning.train": {"assistant.rerank", "assistant.model"},
             "assistant.ui": {"learning.learner"}}
    assert layering_violations(graph) == {"store.db": ["assistant.chat"], "learning.train": ["assistant.rerank"]}
