"""The package's layout, read from the source with ``ast`` (nothing is imported): floors, circles, sizes, privacy.

Two floors of code: thin command modules on top (``mame_transfer/<command>.py``), one library package per concept
below, data flowing one way. The library floors, lowest first, are ``FLOORS``; a library package may import only
lower floors and itself, and nothing imports a command module (an entry point such as ``mame_transfer/__main__.py``
could; there is none). Every import counts: at module level or inside a function, absolute or relative.
"""

from __future__ import annotations

import ast
import re
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "mame_transfer"
ROOT = "mame_transfer"

# library package -> floor, lowest first; a new package needs a floor here
FLOORS = {
    "core": 0,
    "datasets": 1, "knn": 1,
    "models": 2,
    "inference": 3,
    "training": 4,
    "tuning": 5, "store": 5, "deploy": 5,
    "classifiers": 6, "analysis": 6, "explorer": 6,
}
TOP_FLOOR = 7  # the command modules and mame_transfer/__init__.py
ENTRY_POINTS = {f"{ROOT}.__main__"}  # modules allowed to import a command module (none exists today)
MAX_MODULE_LINES = 450
MAX_COMMAND_LINES = 200  # a command module has fewer lines than this


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES: dict[str, Path] = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
COMMANDS = sorted(name for name, p in MODULES.items() if p.parent == PACKAGE and p.name != "__init__.py")
SOURCES = {m: p.read_text(encoding="utf-8") for m, p in MODULES.items()}


def _rel(module: str) -> str:
    return MODULES[module].relative_to(PACKAGE.parent).as_posix()


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _unit(module: str) -> str:
    """What a module belongs to for the floor rules: its library package, ``command``, or the root package."""
    if module == ROOT:
        return ROOT
    if module in COMMANDS:
        return "command"
    return module.split(".")[1]


def _floor(module: str) -> int | None:
    unit = _unit(module)
    return TOP_FLOOR if unit in (ROOT, "command") else FLOORS.get(unit)


@dataclass(frozen=True)
class Import:
    source: str  # the importing module
    target: str | None  # the imported module (a package means its __init__.py); None: no such module
    name: str | None  # the name taken from the target (``from target import name``); None when a module is bound
    line: int
    text: str  # the statement, on one line

    def where(self) -> str:
        return f"{_rel(self.source)}:{self.line} `{self.text}`"


def _longest_module(dotted: str) -> str | None:
    parts = dotted.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in MODULES:
            return ".".join(parts[:n])
    return None


def _from_base(module: str, node: ast.ImportFrom) -> str:
    """The absolute module a ``from ... import`` statement reads from (relative imports resolved)."""
    if not node.level:
        return node.module or ""
    package = module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]
    base = package.split(".")
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _ours(dotted: str) -> bool:
    return dotted == ROOT or dotted.startswith(ROOT + ".")


def _statement(src: str, node: ast.AST) -> str:
    return re.sub(r"\s+", " ", ast.get_source_segment(src, node) or "").replace("( ", "(").replace(", )", ")")


def imports_of(module: str, src: str) -> list[Import]:
    """Every import of a mame_transfer module in ``src`` (the text of ``module``), wherever it stands."""
    found = []
    for node in ast.walk(ast.parse(src)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if _ours(alias.name):
                    found.append(Import(module, _longest_module(alias.name), None, node.lineno, _statement(src, node)))
        elif isinstance(node, ast.ImportFrom):
            base = _from_base(module, node)
            if not _ours(base):
                continue
            for alias in node.names:
                if f"{base}.{alias.name}" in MODULES:  # ``from package import module``
                    found.append(Import(module, f"{base}.{alias.name}", None, node.lineno, _statement(src, node)))
                else:
                    found.append(Import(module, _longest_module(base), alias.name, node.lineno, _statement(src, node)))
    return found


def floor_problems(imports: list[Import]) -> list[str]:
    """Upward and sideways imports, and imports of command modules."""
    problems = []
    for i in imports:
        m = i.source
        if i.target is None or i.target == m:
            continue
        src_unit, dst_unit = _unit(m), _unit(i.target)
        src_floor, dst_floor = _floor(m), _floor(i.target)
        if dst_unit == "command":
            if m not in ENTRY_POINTS:
                problems.append(f"{i.where()}: imports the command module {_rel(i.target)} "
                                f"(nothing imports a command module)")
        elif src_floor is None or dst_floor is None:
            continue  # reported by test_every_module_is_found_and_every_package_has_a_floor
        elif dst_floor > src_floor:
            problems.append(f"{i.where()}: upward import: {src_unit} (floor {src_floor}) imports "
                            f"{_rel(i.target)} ({dst_unit}, floor {dst_floor})")
        elif dst_floor == src_floor and dst_unit != src_unit:
            problems.append(f"{i.where()}: sideways import between two packages of floor {src_floor}: "
                            f"{src_unit} imports {_rel(i.target)} ({dst_unit})")
    return problems


def private_uses(module: str, src: str) -> list[str]:
    """``from x import _private`` and ``x._private`` where x is another mame_transfer module."""
    problems = []
    for i in imports_of(module, src):
        if i.name is not None and _is_private(i.name) and i.target != module:
            problems.append(f"{i.where()}: imports the private name {i.name} of {_rel(i.target)}")
    tree = ast.parse(src)
    aliases = {}  # local name -> the mame_transfer module it is bound to, anywhere in the file
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if _ours(alias.name):
                    aliases[alias.asname or ROOT] = _longest_module(alias.name) if alias.asname else ROOT
        elif isinstance(node, ast.ImportFrom):
            base = _from_base(module, node)
            for alias in node.names:
                if f"{base}.{alias.name}" in MODULES:
                    aliases[alias.asname or alias.name] = f"{base}.{alias.name}"

    def module_of(expr: ast.AST) -> str | None:  # ``m`` or ``mame_transfer.x.y`` -> the module it names
        if isinstance(expr, ast.Name):
            return aliases.get(expr.id)
        if isinstance(expr, ast.Attribute):
            base = module_of(expr.value)
            if base is not None and f"{base}.{expr.attr}" in MODULES:
                return f"{base}.{expr.attr}"
        return None

    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _is_private(node.attr):
            owner = module_of(node.value)
            if owner is not None and owner != module:
                problems.append(f"{_rel(module)}:{node.lineno} `{_statement(src, node)}`: uses the private name "
                                f"{node.attr} of {_rel(owner)}")
    return problems


IMPORTS = {m: imports_of(m, src) for m, src in SOURCES.items()}


def test_every_module_is_found_and_every_package_has_a_floor():
    assert len(COMMANDS) >= 12 and f"{ROOT}.core.cli" in MODULES
    unknown = sorted({_unit(m) for m in MODULES} - {ROOT, "command"} - set(FLOORS))
    assert not unknown, f"package(s) {unknown} have no floor: add them to FLOORS in tests/test_layout.py"
    unresolved = [i.where() for imports in IMPORTS.values() for i in imports if i.target is None]
    assert not unresolved, "imports of modules that do not exist:\n" + "\n".join(unresolved)


def test_the_checks_catch_what_they_look_for():
    """The checker itself, on a made-up text of mame_transfer/store/store.py breaking every rule."""
    src = textwrap.dedent("""\
        from mame_transfer.training import runs
        import mame_transfer.models.build as b
        import mame_transfer.core.cli
        from . import export
        from mame_transfer.core.fileio import _json_default, write_json

        def f():
            from .. import finetune
            from mame_transfer.explorer.site import build_site
            from ..tuning import space
            return runs._config_key, b._private(), export._stream, mame_transfer.core.cli._x, runs.__name__
        """)
    imports = imports_of(f"{ROOT}.store.store", src)
    assert [(i.target, i.name) for i in imports] == [
        (f"{ROOT}.training.runs", None), (f"{ROOT}.models.build", None), (f"{ROOT}.core.cli", None),
        (f"{ROOT}.store.export", None), (f"{ROOT}.core.fileio", "_json_default"), (f"{ROOT}.core.fileio", "write_json"),
        (f"{ROOT}.finetune", None), (f"{ROOT}.explorer.site", "build_site"), (f"{ROOT}.tuning.space", None)]
    floors = floor_problems(imports)
    assert len(floors) == 3, floors
    assert "imports the command module mame_transfer/finetune.py" in floors[0]
    assert "upward import: store (floor 5) imports mame_transfer/explorer/site.py" in floors[1]
    assert "sideways import between two packages of floor 5: store imports mame_transfer/tuning/space.py" in floors[2]
    private = private_uses(f"{ROOT}.store.store", src)
    assert sorted(p.split("`: ", 1)[1] for p in private) == [
        "imports the private name _json_default of mame_transfer/core/fileio.py",
        "uses the private name _config_key of mame_transfer/training/runs.py",
        "uses the private name _private of mame_transfer/models/build.py",
        "uses the private name _stream of mame_transfer/store/export.py",
        "uses the private name _x of mame_transfer/core/cli.py"], private
    assert "mame_transfer/store/store.py:11 `runs._config_key`: uses the private name _config_key" in "\n".join(private)


def test_no_import_circle():
    edges: dict[str, dict[str, Import]] = {m: {} for m in MODULES}
    for m, imports in IMPORTS.items():
        for i in imports:
            if i.target is not None and i.target != m:
                edges[m].setdefault(i.target, i)
    # Tarjan's strongly connected components: every component of 2+ modules holds a circle
    index, low, stack, on_stack, components = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
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

    for v in sorted(MODULES):
        if v not in index:
            visit(v)
    messages = []
    for component in components:
        # the shortest circle through the component's first module, named import by import
        start, inside, paths, queue, circle = component[0], set(component), {component[0]: []}, [component[0]], None
        while queue and circle is None:
            v = queue.pop(0)
            for w, imp in edges[v].items():
                if w == start:
                    circle = paths[v] + [imp]
                    break
                if w in inside and w not in paths:
                    paths[w] = paths[v] + [imp]
                    queue.append(w)
        messages.append(f"import circle among {', '.join(component)}:\n"
                        + "\n".join(f"    {i.where()}" for i in circle))
    assert not messages, "\n".join(messages)


def test_imports_follow_the_floors():
    problems = [p for imports in IMPORTS.values() for p in floor_problems(imports)]
    floors = ", ".join(f"{k} {v}" for k, v in FLOORS.items())
    assert not problems, f"imports against the floors ({floors}; commands {TOP_FLOOR}):\n" + "\n".join(problems)


def test_no_module_over_450_lines():
    sizes = {_rel(m): len(src.splitlines()) for m, src in SOURCES.items()}
    long = {path: n for path, n in sizes.items() if n > MAX_MODULE_LINES}
    assert not long, f"modules over {MAX_MODULE_LINES} lines: {long}"


@pytest.mark.parametrize("command", [c.rpartition(".")[2] for c in COMMANDS])
def test_command_module_is_thin(command):
    n = len(SOURCES[f"{ROOT}.{command}"].splitlines())
    assert n < MAX_COMMAND_LINES, (f"mame_transfer/{command}.py has {n} lines; a command module stays under "
                                   f"{MAX_COMMAND_LINES} (parse the flags, call the library, print)")


def test_no_private_name_used_across_modules():
    problems = [p for m, src in SOURCES.items() for p in private_uses(m, src)]
    assert not problems, "private names used outside their module:\n" + "\n".join(problems)
