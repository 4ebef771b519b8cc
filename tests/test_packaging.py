"""The wheel carries the whole product and nothing else.

`pip install .` once built a wheel without app/tui/ (its packages were listed by hand) and
`antiphon talk` failed with ModuleNotFoundError. Here a wheel is built from the tracked files
alone, as a fresh clone has them, and must hold every tracked file under app/, model/ and
audio_io/ (the TUI's styles and the bundled model included), only those three import packages,
and the `antiphon` console script.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PRODUCT = ("app", "model", "audio_io")


def tracked_files() -> list[str]:
    git = shutil.which("git")
    if git is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout: which files are the product's is not known")
    listed = subprocess.run(
        [git, "ls-files", "--", "pyproject.toml", "README.md", *PRODUCT],
        cwd=ROOT, capture_output=True, text=True, check=True,
    )  # fmt: skip
    return [name for name in listed.stdout.splitlines() if (ROOT / name).is_file()]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    files = tracked_files()
    source = tmp_path_factory.mktemp("source")  # building in the checkout would leave build/
    for name in files:
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, source / name)
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "--quiet", "--wheel-dir", str(out), str(source)],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    (built,) = out.glob("antiphon-*.whl")
    return zipfile.ZipFile(built)


@pytest.mark.slow
def test_the_wheel_holds_every_product_file(wheel: zipfile.ZipFile) -> None:
    product = [name for name in tracked_files() if name.split("/")[0] in PRODUCT]
    assert "app/talk/tui/antiphon.tcss" in product
    missing = sorted(set(product) - set(wheel.namelist()))
    assert not missing, f"not in the wheel: {missing}"


@pytest.mark.slow
def test_the_wheel_installs_three_packages_and_the_command(wheel: zipfile.ZipFile) -> None:
    tops = {name.split("/")[0] for name in wheel.namelist()}
    assert {top for top in tops if not top.endswith(".dist-info")} == set(PRODUCT)
    (entry_points,) = [n for n in wheel.namelist() if n.endswith(".dist-info/entry_points.txt")]
    assert "antiphon = app.cli:main" in wheel.read(entry_points).decode()
    (metadata,) = [n for n in wheel.namelist() if n.endswith(".dist-info/METADATA")]
    requires = wheel.read(metadata).decode()
    for direct in ("textual<9,>=8", "rich>=13", "paho-mqtt<3,>=2.1", "aiomqtt<3,>=2.5"):
        assert f"Requires-Dist: {direct}" in requires, direct
