"""Imports go one way, so the folders tell the pipeline and no module needs an import hidden in a
function to dodge a cycle. Read with `ast` from the sources; every import counts, the ones inside
functions too (only `if TYPE_CHECKING:` blocks are left out: they never run).

- Packages: experiments -> probes, viz, mech; probes -> mech; viz -> its own modules and
  `mech.io` (it renders what run folders hold, never computes findings); mech -> mech only.
- Inside mech, stages in dependency order: io < models < hooks < adapters < training <
  evaluation, directions < verdicts. A module imports its own stage or an earlier one. The toy organism's
  world, tokenizer and checkpoint are a model; its judge and evaluation are evaluation.
- A judge protocol module imports none of its implementations.
- No cycles among the project's modules.
"""

from __future__ import annotations

import ast
from collections.abc import Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("mech", "probes", "viz", "experiments", "benchmarks")

ALLOWED_PACKAGES = {
    "mech": ("mech",),
    "probes": ("probes", "mech"),
    "viz": ("viz", "mech.io"),
    "experiments": ("experiments", "probes", "viz", "mech"),
    "benchmarks": ("benchmarks", "mech", "probes"),
}
STAGES = {
    "mech._quiet": 0,
    "mech.io": 0,
    "mech.models": 1,
    "mech.toy.domains": 1,
    "mech.toy.world": 1,
    "mech.toy.chat_tokenizer": 1,
    "mech.toy.training": 1,
    "mech.toy.checkpoint": 1,
    "mech.toy.datafiles": 1,
    "mech.hooks": 2,
    "mech.adapters": 3,
    "mech.training": 4,
    "mech.evaluation": 5,
    "mech.toy.candidates": 5,
    "mech.toy.judge": 5,
    "mech.toy.evaluate": 5,
    "mech.directions": 5,
    "mech.verdicts": 6,
}
PROTOCOLS = {"mech.evaluation.judges.protocol": ("mech.evaluation.judges", "mech.toy")}
"""A protocol module and the packages its implementations live in."""


def project_sources(root: Path = ROOT) -> dict[str, str]:
    """Module name -> source, for every module of the project's packages."""
    sources = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            sources[".".join(parts)] = path.read_text()
    return sources


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imported_modules(source: str, known: set[str]) -> set[str]:
    """The project modules `source` imports (a `from package import module` names the module)."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(source))
    return {name for name in found if name in known}


def _within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def stage_of(module: str) -> int | None:
    matches = [p for p in STAGES if _within(module, p)]
    return STAGES[max(matches, key=len)] if matches else None


def import_graph(sources: Mapping[str, str]) -> dict[str, set[str]]:
    known = set(sources)
    # the root package's lazy facade imports everything on demand, by design
    return {m: imported_modules(s, known) - {m} for m, s in sources.items() if m != "mech"}


def violations(sources: Mapping[str, str]) -> list[str]:
    """Every import against the rules above, as 'importer -> imported: why'."""
    graph = import_graph(sources)
    found = []
    for importer, targets in sorted(graph.items()):
        package = importer.split(".")[0]
        for target in sorted(targets):
            if target == "mech":
                found.append(f"{importer} -> mech: import the defining module, not the lazy facade")
                continue
            if not any(_within(target, allowed) for allowed in ALLOWED_PACKAGES[package]):
                found.append(f"{importer} -> {target}: {package} may import {ALLOWED_PACKAGES[package]} only")
            here, there = stage_of(importer), stage_of(target)
            if here is not None and there is not None and there > here:
                found.append(f"{importer} -> {target}: stage {here} imports the later stage {there}")
            for implementations in PROTOCOLS.get(importer, ()):
                if _within(target, implementations):
                    found.append(f"{importer} -> {target}: a protocol imports none of its implementations")
    found += [f"cycle: {' -> '.join(cycle)}" for cycle in cycles(graph)]
    return found


def cycles(graph: Mapping[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                connect(w)
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
                components.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return [_a_cycle(graph, set(c)) for c in components]


def _a_cycle(graph: Mapping[str, set[str]], component: set[str]) -> list[str]:
    start = min(component)
    path, seen = [start], {start}
    while True:
        nxt = min(w for w in graph[path[-1]] if w in component)
        if nxt in seen:
            return path[path.index(nxt) :] + [nxt]
        path.append(nxt)
        seen.add(nxt)


def test_the_project_imports_one_way():
    sources = project_sources()
    assert {"mech.models.load", "mech.evaluation.judges.protocol", "viz.report"} <= set(sources)
    assert violations(sources) == []


def _with_line(sources: dict[str, str], module: str, line: str) -> dict[str, str]:
    return {**sources, module: sources[module] + "\n" + line + "\n"}


def test_a_forbidden_import_is_caught():
    sources = project_sources()
    cases = {
        # viz computing findings again (the old cycle), even from inside a function
        ("viz.report", "def f():\n    from experiments import summary"): "viz may import",
        ("probes.linear", "import viz.figures"): "probes may import",
        ("mech.hooks", "from probes.metrics import auroc"): "mech may import",
        (
            "mech.models.chat",
            "from mech.training.engine import finetune",
        ): "stage 1 imports the later stage 4",
        ("mech.evaluation.judges.protocol", "from mech.toy.judge import ToyJudge"): "a protocol imports none",
        ("mech.evaluation.judges.protocol", "from mech.evaluation.judges import openai_judge"): "a protocol",
        ("mech.io.atomic", "from mech.io.provenance import write_status"): "cycle: mech.io.atomic",
        ("experiments.outputs", "import mech"): "not the lazy facade",
    }
    for (module, line), why in cases.items():
        found = violations(_with_line(sources, module, line))
        assert any(why in v for v in found), (module, line, found)
    # an import that only type checkers see is no dependency at run time
    typing_only = (
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from mech.training.engine import finetune"
    )
    assert violations(_with_line(sources, "mech.models.chat", typing_only)) == []


def test_the_facade_names_each_public_name_s_defining_module():
    import importlib

    import mech

    for name, module in mech._EXPORTS.items():
        value = getattr(importlib.import_module(module), name)
        assert getattr(value, "__module__", module) == module, (name, module, value.__module__)
        assert getattr(mech, name) is value
