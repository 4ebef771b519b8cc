"""ARCHITECTURE.md's dependency rules: `app -> model, audio_io`, never the other way.

Static: every import statement under model/, audio_io/ and app/ is read with `ast` (imports inside
functions and `if TYPE_CHECKING:` blocks count too). Runtime: `import model` in a fresh interpreter
must not pull the forbidden packages into `sys.modules`.
"""

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PRODUCT_PACKAGES = ("model", "audio_io", "app")

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


def is_server_module(path: Path) -> bool:
    relative = path.relative_to(ROOT)
    return relative.parts[0] == "app" and any(
        part.startswith(("serve", "server")) for part in relative.parts[1:]
    )


def test_product_files_are_found() -> None:
    files = product_files()
    assert ROOT / "model" / "__init__.py" in files
    assert ROOT / "app" / "__init__.py" in files


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


@pytest.mark.parametrize("path", product_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_follow_the_layering(path: Path) -> None:
    package = path.relative_to(ROOT).parts[0]
    forbidden = FORBIDDEN[package] | (SERVER_FORBIDDEN if is_server_module(path) else set())
    forbidden -= REFERENCE_ADAPTERS.get(path.relative_to(ROOT).as_posix(), set())
    assert not imported_top_level_names(path) & forbidden


def test_importing_model_stays_light() -> None:
    code = "import json, sys, model; print(json.dumps(sorted(sys.modules)))"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    loaded = {name.split(".")[0] for name in json.loads(result.stdout)}
    assert "model" in loaded
    assert not loaded & {"app", "textual", "aiomqtt", "sounddevice", "moshi"}
