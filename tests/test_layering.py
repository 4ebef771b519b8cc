"""The dependency rules of docs/architecture.md, checked on every import statement.

    floor 3  app/cli.py                            the `antiphon` command: composes the front doors
    floor 2  app/talk serve run eval train bench   front doors: never import each other
    floor 1  app/core  app/wire                    what the front doors share; never each other
    floor 0  model  audio_io                       pure torch; sound and files (no torch)

A module may import its own unit (package) and any unit on a lower floor, nothing else; the
modules import no loop, even through imports placed inside functions. Static: every import
statement under model/, audio_io/ and app/ is read with `ast` (imports inside functions and
`if TYPE_CHECKING:` blocks count too). Runtime: importing `model`, or the server, in a fresh
interpreter must not pull forbidden packages into `sys.modules`.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PRODUCT_PACKAGES = ("model", "audio_io", "app")
FRONT_DOORS = ("talk", "serve", "run", "eval", "train", "bench")
FLOORS = {
    "app": 0,  # the package itself: a docstring, imported by every app module
    "model": 0,
    "audio_io": 0,
    "app.core": 1,
    "app.wire": 1,
    **{f"app.{door}": 2 for door in FRONT_DOORS},
    "app.cli": 3,
}
MAX_LINES = 600  # past this a module holds more than one idea: split it by idea

# top-level module names each part of the product must never import
FORBIDDEN = {
    "model": {"app", "textual", "aiomqtt", "sounddevice", "moshi"},
    "audio_io": {"app", "model", "torch", "textual", "aiomqtt", "moshi"},
    "app": {"moshi"},  # the reference package is a test-only oracle
}
# the headless server never imports the TUI
SERVER_FORBIDDEN = {"textual"}
# The one exception: the reference side of `antiphon bench`, which app/bench/cli.py imports
# lazily and only when a comparison is asked for (tests/app/bench/test_bench.py checks that).
REFERENCE_ADAPTERS = {"app/bench/reference.py": {"moshi"}}


def product_files() -> list[Path]:
    return sorted(path for package in PRODUCT_PACKAGES for path in (ROOT / package).rglob("*.py"))


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


PRODUCT_MODULES = {module_name(path): path for path in product_files()}


def _imports(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node


def imported_top_level_names(path: Path) -> set[str]:
    """Top-level names of absolute imports; relative imports stay inside their own package."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute | ast.Name)
            and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            names.add(node.args[0].value.split(".")[0])  # importlib.import_module("x")
    return names


def imported_product_modules(
    path: Path, known: dict[str, Path] | None = None, module: str | None = None
) -> set[str]:
    """The product modules `path` imports, relative imports resolved: `from pkg import mod`
    counts as importing `pkg.mod` when that is a module, `from mod import name` as `mod`."""
    known = PRODUCT_MODULES if known is None else known
    module = module_name(path) if module is None else module
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: set[str] = set()

    def closest(name: str) -> str | None:
        while name and name not in known:
            name = name.rpartition(".")[0]
        return name or None

    for node in _imports(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(parent + ([node.module] if node.module else []))
            targets = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base
                for alias in node.names
            ]
        for target in targets:
            resolved = closest(target)
            if resolved is not None and resolved != module:
                found.add(resolved)
    return found


def unit(module: str) -> str:
    """The unit (a key of FLOORS) a product module belongs to: its longest matching prefix."""
    matches = [key for key in FLOORS if module == key or module.startswith(key + ".")]
    assert matches, f"{module} belongs to no unit of FLOORS: give it a floor"
    return max(matches, key=len)


def import_graph() -> dict[str, set[str]]:
    return {name: imported_product_modules(path) for name, path in PRODUCT_MODULES.items()}


def import_loops(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    loops: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1 or node in graph.get(node, ()):
                loops.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return loops


def is_server_module(path: Path) -> bool:
    relative = path.relative_to(ROOT)
    return relative.parts[0] == "app" and any(
        part.startswith(("serve", "server")) for part in relative.parts[1:]
    )


# --- the scanner itself ----------------------------------------------------------------------


def test_product_files_are_found() -> None:
    files = product_files()
    assert ROOT / "model" / "__init__.py" in files
    assert ROOT / "app" / "__init__.py" in files
    assert {"app.core.engine", "app.talk.tui.app", "app.serve.node"} <= set(PRODUCT_MODULES)


def test_import_scanner_sees_every_form(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text(
        "import os.path\n"
        "from textual.app import App\n"
        "from . import sibling\n"
        "def f():\n"
        "    import aiomqtt\n"
        "    importlib.import_module('moshi.models')\n"
    )
    assert imported_top_level_names(sample) == {"os", "textual", "aiomqtt", "moshi"}


def test_product_imports_are_resolved(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text(
        "from . import loop\n"  # a sibling module
        "from .codec import WEIGHTS\n"  # a name of a sibling module
        "from ..core.engine import Engine\n"  # two levels up
        "from app.wire import protocol\n"
        "import model.config\n"
        "def f():\n"
        "    from app.eval.turns import merge  # inside a function: counts too\n"
    )
    known = dict.fromkeys(
        ["app", "app.core", "app.core.engine", "app.train", "app.train.loop", "app.train.codec",
         "app.wire", "app.wire.protocol", "app.eval", "app.eval.turns", "model", "model.config"]
    )  # fmt: skip
    found = imported_product_modules(sample, known, module="app.train.sample")  # type: ignore[arg-type]
    assert found == {
        "app.train.loop", "app.train.codec", "app.core.engine", "app.wire.protocol",
        "model.config", "app.eval.turns",
    }  # fmt: skip


def test_loops_are_found() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"e"}}
    assert import_loops(graph) == [["a", "b", "c"], ["e"]]


def test_every_module_has_a_floor() -> None:
    assert {unit(name) for name in PRODUCT_MODULES} == set(FLOORS)


# --- the rules -------------------------------------------------------------------------------


def test_no_import_loops() -> None:
    assert import_loops(import_graph()) == []


@pytest.mark.parametrize("name", sorted(PRODUCT_MODULES))
def test_imports_go_down_a_floor_or_stay_in_their_unit(name: str) -> None:
    own = unit(name)
    wrong = [
        f"{name} ({own}, floor {FLOORS[own]}) imports {target} "
        f"({unit(target)}, floor {FLOORS[unit(target)]})"
        for target in sorted(imported_product_modules(PRODUCT_MODULES[name]))
        if unit(target) != own and FLOORS[unit(target)] >= FLOORS[own]
    ]
    assert not wrong


@pytest.mark.parametrize("path", product_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_follow_the_layering(path: Path) -> None:
    package = path.relative_to(ROOT).parts[0]
    forbidden = FORBIDDEN[package] | (SERVER_FORBIDDEN if is_server_module(path) else set())
    forbidden -= REFERENCE_ADAPTERS.get(path.relative_to(ROOT).as_posix(), set())
    assert not imported_top_level_names(path) & forbidden


@pytest.mark.parametrize("path", product_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_modules_stay_short(path: Path) -> None:
    lines = len(path.read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, f"{lines} lines: split it by idea"


def _loaded_by(statement: str) -> set[str]:
    code = f"import json, sys; {statement}; print(json.dumps(sorted(sys.modules)))"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return {name.split(".")[0] for name in json.loads(result.stdout)}


def test_importing_model_stays_light() -> None:
    loaded = _loaded_by("import model")
    assert "model" in loaded
    assert not loaded & {"app", "textual", "aiomqtt", "sounddevice", "moshi"}


def test_the_server_never_loads_the_tui() -> None:
    loaded = _loaded_by("import app.serve.cli")
    assert "aiomqtt" in loaded
    assert not loaded & {"textual", "moshi"}
