"""fitm's import graph stays layered: no module imports one from a layer above it, nothing imports in a cycle, and
the score model (sde/) and the detector (detector/) know nothing of each other. Read from the source with `ast`,
lazy imports inside functions included."""

import ast
from pathlib import Path

import fitm

ROOT = Path(fitm.__file__).parent
# Each top-level module or package of fitm, by layer: a module may import from its own layer and those below.
LAYERS = [
    {"cli"},
    {"api", "commands", "predict"},
    {"stages", "sizing"},
    {"sde", "detector", "report", "export"},
    {"run", "knn", "runtime", "config", "data"},
    {"io", "errors"},
]
LAYER = {unit: depth for depth, units in enumerate(LAYERS) for unit in units}
ENTRY_POINTS = {"__init__", "__main__"}  # fitm itself re-exports Detector; `python -m fitm` runs the cli


def _unit(module: str) -> str | None:
    """The top-level module or package of fitm that a dotted name belongs to (None: fitm's own __init__, or the
    configs, which are data)."""
    parts = module.split(".")
    if parts[0] != "fitm" or len(parts) == 1 or parts[1] in ("configs", "__version__"):
        return None
    return parts[1]


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.level:
                raise AssertionError(f"{path}: relative import (fitm imports by absolute name)")
            # `from fitm import stages` imports the module fitm.stages
            found |= {f"{node.module}.{alias.name}" if node.module == "fitm" else node.module for alias in node.names}
    return found


def import_graph() -> dict[str, set[str]]:
    """unit -> the other units it imports."""
    graph = {}
    for path in ROOT.rglob("*.py"):
        unit = path.relative_to(ROOT).parts[0].removesuffix(".py")
        if unit in ENTRY_POINTS:
            continue
        targets = {_unit(m) for m in _imports(path)} - {None, unit}
        graph.setdefault(unit, set()).update(targets)
    return graph


def test_every_unit_has_a_layer():
    unknown = sorted(set(import_graph()) - set(LAYER))
    assert not unknown, f"fitm/{unknown[0]}: not in any layer of tests/unit/test_layers.py LAYERS (add it there)"


def test_no_upward_imports():
    upward = [f"{a} -> {b}" for a, targets in import_graph().items() for b in targets
              if a in LAYER and b in LAYER and LAYER[b] < LAYER[a]]
    assert not upward, f"imports from a higher layer: {sorted(upward)}"


def test_sde_and_detector_do_not_import_each_other():
    graph = import_graph()
    assert "detector" not in graph["sde"] and "sde" not in graph["detector"]


def test_no_cycles():
    graph, done, path = import_graph(), set(), []

    def visit(unit):
        if unit in path:
            raise AssertionError("import cycle: " + " -> ".join(path[path.index(unit):] + [unit]))
        if unit in done:
            return
        path.append(unit)
        for target in sorted(graph.get(unit, ())):
            visit(target)
        path.pop()
        done.add(unit)

    for unit in sorted(graph):
        visit(unit)


def test_the_checks_see_a_cycle_and_an_upward_import(monkeypatch):
    """The graph really is read: a fake edge stages -> cli is caught by both checks."""
    real = import_graph()
    monkeypatch.setitem(globals(), "import_graph", lambda: {**real, "stages": real["stages"] | {"cli"}})
    for check in (test_no_upward_imports, test_no_cycles):
        try:
            check()
        except AssertionError:
            continue
        raise AssertionError(f"{check.__name__} missed the edge stages -> cli")
