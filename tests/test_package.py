"""The built wheel: one top-level name (`seqserve`), the console commands, and the commands run installed.

The wheel is built once (pip wheel --no-deps: no download, setuptools comes from the build isolation cache
or the index) and installed with --no-deps into a virtual environment that borrows this one's packages, so
the installed commands are checked without reinstalling onnxruntime or torch.
"""

from __future__ import annotations

import configparser
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = {
    "seqserve": "seqserve.cli:main",
    "seqserve-server": "seqserve.server.__main__:main",
    "seqserve-healthcheck": "seqserve.server.healthcheck:main",
    "seqserve-batch": "seqserve.batch.cli:main",
    "seqserve-export": "seqserve.commands:export",
    "seqserve-fit": "seqserve.commands:fit",
}

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(ROOT)],
                   check=True, capture_output=True, timeout=300)
    (built,) = out.glob("seqserve-*.whl")
    return built


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv with the wheel installed (no dependencies of its own: it sees this environment's packages)."""
    env = tmp_path_factory.mktemp("venv")
    venv.create(env, with_pip=False, system_site_packages=False)
    site = next(env.glob("lib/python*/site-packages"))
    here = next(p for p in map(Path, sys.path) if p.name == "site-packages" and (p / "numpy").is_dir())
    (site / "borrowed.pth").write_text(f"{here}\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(env / "bin" / "python"), "install", "--no-deps",
                    "-q", str(wheel)], check=True, capture_output=True, timeout=300)
    return env


def test_the_wheel_installs_only_seqserve(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as z:
        top = {name.split("/")[0] for name in z.namelist()}
    assert top == {"seqserve", wheel.name.split("-py")[0] + ".dist-info"}, top


def test_the_wheel_declares_the_console_commands(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as z:
        (entry_points,) = [n for n in z.namelist() if n.endswith(".dist-info/entry_points.txt")]
        parser = configparser.ConfigParser()
        parser.read_string(z.read(entry_points).decode())
    assert dict(parser["console_scripts"]) == COMMANDS


def test_the_installed_commands_run_outside_the_checkout(installed: Path, tmp_path: Path) -> None:
    """From a folder that is not the checkout, each command answers --help from the installed package."""
    for command in COMMANDS:
        done = subprocess.run([str(installed / "bin" / command), "--help"], cwd=tmp_path, capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 0, (command, done.stderr[-2000:])
        assert "usage:" in done.stdout, (command, done.stdout[:500])
    where = subprocess.run([str(installed / "bin" / "python"), "-c",
                            "import seqserve.server, seqserve.model; print(seqserve.server.__file__)"],
                           cwd=tmp_path, capture_output=True, text=True, timeout=120, check=True)
    assert Path(where.stdout.strip()).is_relative_to(installed), where.stdout
