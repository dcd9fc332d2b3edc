"""The package's structure: no import cycle between modules (a registry package importing its own
method files is the one allowed loop), the library's light entry points do not import Hydra, and files
and functions stay small: a module over 300 lines says why in its docstring ("One module: ..."), and so
does a function whose body, without its docstring, is over 40 lines ("Function of more than 40 lines: ...")."""

import ast
import itertools
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import List

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


#: The size rule: longer modules and functions say why in their docstrings, with these words.
MODULE_LINES, FUNCTION_LINES = 300, 40
MODULE_REASON, FUNCTION_REASON = "One module:", "Function of more than 40 lines:"


def _says(node: ast.AST, reason: str) -> bool:
    """Whether ``node``'s docstring holds ``reason`` (however its lines are wrapped)."""
    return reason in " ".join((ast.get_docstring(node) or "").split())


def _body_lines(node: ast.AST) -> int:
    """A function's lines from its first statement after the docstring to its end."""
    body = node.body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
            and isinstance(body[0].value.value, str):
        body = body[1:]
    return node.end_lineno - body[0].lineno + 1 if body else 0


def _long_module(source: str, name: str) -> List[str]:
    """``["name: N lines"]`` when the module ``source`` is over MODULE_LINES lines without a reason, else ``[]``."""
    lines = len(source.splitlines())
    return [f"{name}: {lines} lines"] if lines > MODULE_LINES and not _says(ast.parse(source), MODULE_REASON) else []


def _long_functions(source: str, name: str) -> List[str]:
    """``"name:LINE function: N lines"`` for each function of ``source`` (methods and nested ones included)
    whose body is over FUNCTION_LINES lines without a reason."""
    return [f"{name}:{node.lineno} {node.name}: {_body_lines(node)} lines" for node in ast.walk(ast.parse(source))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and _body_lines(node) > FUNCTION_LINES and not _says(node, FUNCTION_REASON)]


def _sources():
    return [(path.relative_to(ROOT.parent).as_posix(), path.read_text()) for path in sorted(ROOT.rglob("*.py"))]


def test_every_module_is_short_or_says_why():
    found = [hit for name, source in _sources() for hit in _long_module(source, name)]
    assert not found, (f"modules over {MODULE_LINES} lines: split them, or say why in the module docstring "
                       f"('{MODULE_REASON} ...'):\n" + "\n".join(found))


def test_every_function_is_short_or_says_why():
    found = [hit for name, source in _sources() for hit in _long_functions(source, name)]
    assert not found, (f"functions over {FUNCTION_LINES} lines (without their docstring): split them, or say why "
                       f"in the docstring ('{FUNCTION_REASON} ...'):\n" + "\n".join(found))


def test_the_size_checks_find_a_long_module_and_a_long_function():
    def function(statements: int, doc: str = "Doc.") -> str:
        return f'def f():\n    """{doc}"""\n' + "".join(f"    x{i} = {i}\n" for i in range(statements))

    assert _long_functions(function(40), "m.py") == []
    assert _long_functions(function(41), "m.py") == ["m.py:1 f: 41 lines"]
    assert _long_functions(function(41, "Doc. Function of more than 40\n    lines: it reads best whole."), "m.py") == []
    assert _long_functions("class C:\n" + textwrap.indent(function(41), "    "), "m.py") == ["m.py:2 f: 41 lines"]
    assert _long_module('"""Doc."""\n' + "x = 1\n" * 299, "m.py") == []
    assert _long_module('"""Doc."""\n' + "x = 1\n" * 300, "m.py") == ["m.py: 301 lines"]
    assert _long_module('"""Doc. One module: it is one thing."""\n' + "x = 1\n" * 300, "m.py") == []
