"""iclgd's imports point down one layer order and form no circle.

Every `iclgd` import of every module counts, including those inside functions: an import
deferred into a function still makes its module depend on the target, and a circle closed by
one is still a circle. Also counted: `importlib.import_module("iclgd....")` with a literal name.
Left out are only imports under `if TYPE_CHECKING:` (annotations, no runtime dependency) and
the lazy facade `iclgd/__init__.py`, which imports nothing when it runs (a public name is
imported from its home module, `_HOME`, on first use). The subpackages' `__init__` files
import eagerly (`iclgd.hooks`, `iclgd.constructions`) or not at all, so they are checked like
any module. Modules never import from the facade `iclgd`, nor from their own subpackage's
`__init__` when it re-exports its modules (`from iclgd import constructions` inside
`iclgd.constructions.registry`): they name the home module, so the graph shows the real
dependency and no circle waits in an `__init__`.

Layers, lowest first (a module may import its own layer and the layers below it):

- base: `errors`, `specs`, `results`, `runtime` (no model code);
- `data`: GINC, regression tasks, token tasks, tokenizers;
- `hooks`: one interface over every model (loading, capture, raw weights, checkpoints);
- `constructions`: hand-built weights and the reference algorithms they claim;
- `probes`: measurements of a model (ICL, induction, density, ΔW, ...), including the audit
  of a construction against its reference algorithm;
- `training`: trainers and their evaluation;
- `analyses`: experiments composed of the layers below (sweep, compare, sections, demo);
- `bench`: benchmarks of the library against plain PyTorch / Hugging Face;
- `commands`: the subcommands and the in-process command runner (`iclgd.commands.main`);
- `cli`: the console script (and `iclgd/__main__.py`, `python -m iclgd`).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "iclgd"
LAYERS = ("base", "data", "hooks", "constructions", "probes", "training", "analyses", "bench",
          "commands", "cli")
BASE = ("errors", "specs", "results", "runtime")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def layer(module: str) -> str:
    """The layer of a module: its subpackage, `base` for the top-level helpers, `cli`."""
    top = module.split(".")[1]
    if top in BASE:
        return "base"
    if top == "__main__":  # `python -m iclgd`: the console script's other entry
        return "cli"
    if top not in LAYERS:
        raise AssertionError(f"{module} is in no declared layer: add it to LAYERS or BASE")
    return top


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _target(name: str, imported: str | None = None) -> str:
    """The module an import statement depends on (`from pkg import module` → the module)."""
    full = f"{name}.{imported}" if imported else name
    return full if full in MODULES else name


def imports(module: str) -> list[tuple[str, int]]:
    """`(target module, line)` of every runtime `iclgd` import in `module` (see the docstring)."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found: list[tuple[str, int]] = []

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for stmt in child.orelse:
                    visit_one(stmt)
            else:
                visit_one(child)

    def visit_one(node: ast.AST) -> None:
        if isinstance(node, ast.Import):
            found.extend((_target(a.name), node.lineno) for a in node.names
                         if a.name.split(".")[0] == "iclgd")
            return
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            if base.split(".")[0] == "iclgd":
                found.extend((_target(base, a.name), node.lineno) for a in node.names)
            return
        if isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            value = node.args[0].value
            if called == "import_module" and isinstance(value, str) \
                    and value.split(".")[0] == "iclgd":
                found.append((_target(value), node.lineno))
        visit(node)

    visit(ast.parse(path.read_text(encoding="utf-8"), str(path)))
    return found


CHECKED = [m for m in MODULES if m != "iclgd"]  # the lazy facade is left out (docstring)
GRAPH = {m: sorted({t for t, _ in imports(m) if t != m}) for m in CHECKED}


REEXPORTING = {m for m in CHECKED if MODULES[m].name == "__init__.py"
               and any(t.startswith(m + ".") for t in GRAPH[m])}


def find_cycle(graph: dict[str, list[str]]) -> list[str] | None:
    """One circle of the graph as `[a, b, ..., a]`, or None (depth-first search)."""
    state: dict[str, int] = {}  # 1 on the current path, 2 finished
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in graph.get(node, ()):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)) is not None:
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)) is not None:
            return cycle
    return None


def test_the_scan_sees_imports_inside_functions_and_skips_type_checking(tmp_path):
    code = ("from typing import TYPE_CHECKING\n"
            "from iclgd.errors import IclgdError\n"
            "if TYPE_CHECKING:\n"
            "    from iclgd.hooks.types import HookedModel\n"
            "def f():\n"
            "    from iclgd.probes import density\n"
            "    import importlib\n"
            "    return importlib.import_module('iclgd.analyses.sweep')\n")
    tree = ast.parse(code)
    assert any(isinstance(n, ast.If) and _is_type_checking(n) for n in tree.body)
    MODULES["iclgd.data._scan_probe"] = probe = tmp_path / "_scan_probe.py"
    try:
        probe.write_text(code)
        got = imports("iclgd.data._scan_probe")
    finally:
        del MODULES["iclgd.data._scan_probe"]
    assert got == [("iclgd.errors", 2), ("iclgd.probes.density", 6), ("iclgd.analyses.sweep", 8)]


def test_find_cycle_reports_the_circle():
    assert find_cycle({"a": ["b"], "b": ["c"], "c": ["a"], "d": ["a"]}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": ["b"], "b": [], "c": ["a", "b"]}) is None


def test_no_import_circles():
    cycle = find_cycle(GRAPH)
    assert cycle is None, "import circle: " + " -> ".join(cycle or [])


@pytest.mark.parametrize("module", CHECKED)
def test_imports_point_down_the_layers(module):
    mine = LAYERS.index(layer(module))
    own = module.rsplit(".", 1)[0] if MODULES[module].name != "__init__.py" else None
    own = own if own in REEXPORTING else None
    wrong = []
    for target, line in sorted(set(imports(module)), key=lambda t: t[1]):
        if target in ("iclgd", own):
            wrong.append(f"line {line}: imports from the package `{target}`; name the home module")
        elif LAYERS.index(layer(target)) > mine:
            wrong.append(f"line {line}: {target} ({layer(target)}) is above {layer(module)}")
    assert not wrong, f"{module}: " + "; ".join(wrong)
