"""The package's structure: no import cycle between modules (a registry package importing its own
method files is the one allowed loop), and the library's light entry points do not import Hydra."""

import ast
import itertools
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "src" / "shiftkit"


def _modules():
    found = {}
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def _imports(name: str, path: Path, modules) -> set:
    """Every shiftkit module ``name`` imports, at the top or inside a function."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            candidates = [base, *(f"{base}.{a.name}" for a in node.names)]
        elif isinstance(node, ast.Import):
            candidates = [a.name for a in node.names]
        else:
            continue
        out |= {c for c in candidates if c in modules and c != name}
    return out


def _cycles(edges):
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, found, counter = {}, {}, [], set(), [], itertools.count()

    def visit(v):
        index[v] = low[v] = next(counter)
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(component)

    for v in edges:
        if v not in index:
            visit(v)
    return found


def test_no_import_cycle_outside_a_registry_packages_own_files():
    modules = _modules()
    edges = {name: _imports(name, path, modules) for name, path in modules.items()}
    assert not _bad_cycles(modules, edges), f"import cycles: {_bad_cycles(modules, edges)}"


def _bad_cycles(modules, edges):
    """Cycles other than a registry package (not the root) and the method files it imports."""
    def registry_package(component):
        return any(m != "shiftkit" and modules[m].name == "__init__.py"
                   and all(x == m or x.startswith(m + ".") for x in component) for m in component)

    return [sorted(c) for c in _cycles(edges) if not registry_package(c)]


def test_the_cycle_check_finds_a_cycle():
    modules = {"shiftkit.cli": Path("cli.py"), "shiftkit.launch": Path("launch.py"),
               "shiftkit.losses": Path("__init__.py"), "shiftkit.losses.basic": Path("basic.py")}
    edges = {"shiftkit.cli": {"shiftkit.launch"}, "shiftkit.launch": {"shiftkit.cli"},
             "shiftkit.losses": {"shiftkit.losses.basic"}, "shiftkit.losses.basic": {"shiftkit.losses"}}
    assert _bad_cycles(modules, edges) == [["shiftkit.cli", "shiftkit.launch"]]


@pytest.mark.parametrize("module", ["shiftkit.losses", "shiftkit.sklearn", "shiftkit.train", "shiftkit.ensemble",
                                    "shiftkit.weighting", "shiftkit.procedures"])
def test_the_library_imports_without_hydra(module):
    code = f"import sys, {module}; print(sorted(m for m in ('hydra', 'omegaconf') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", f"{module} imports {out.strip()}"
