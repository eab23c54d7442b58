"""The built wheel installs into a clean environment beside dissect.cstruct and its CLI works.

The environment borrows this one's third-party packages (torch, pandas, ...) through a path file
only, so neither the editable install nor the repository's folders are importable there: what
runs is what the wheel ships.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _pip(python: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(python), "-m", "pip", "--disable-pip-version-check", *args], capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    src = out / "src"
    # Build from a copy, so the build's own folders never land in the working tree.
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".git", ".ci", "*.egg-info", "build", "out", ".venv", "__pycache__"))
    proc = _pip(Path(sys.executable), "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(src))
    assert proc.returncode == 0, proc.stderr[-3000:]
    (found,) = out.glob("concept_dissection-*.whl")
    return found


def test_wheel_contents(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    assert "concepts/data/w2color.npy" in names and "concepts/data/ATTRIBUTION.txt" in names
    assert "concepts/dissect/tally.py" in names and "concepts/builders/cvat.py" in names
    # No generic top-level packages that other distributions also install.
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"concepts"}, tops


def test_clean_install_beside_dissect_cstruct(wheel: Path, tmp_path: Path) -> None:
    env_dir = tmp_path / "env"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    # Third-party dependencies come from this environment's site-packages, the package itself only from the wheel.
    Path(purelib, "borrowed.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    proc = _pip(python, "install", "-q", "--no-deps", "--ignore-installed", "dissect.cstruct")
    if proc.returncode != 0:
        pytest.skip(f"dissect.cstruct could not be installed from the package registry: {proc.stderr.strip().splitlines()[-1:]}")
    proc = _pip(python, "install", "-q", "--no-deps", "--ignore-installed", str(wheel))
    assert proc.returncode == 0, proc.stderr[-3000:]

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["CONCEPTS_NO_PROGRESS"] = "1"
    check = subprocess.run(
        [str(python), "-c", "import dissect.cstruct, concepts, concepts.dissect, concepts.builders; "
         "print(concepts.__file__); print(dissect.cstruct.__file__)"],
        cwd=tmp_path, capture_output=True, text=True, env=env, timeout=300,
    )
    assert check.returncode == 0, check.stderr[-3000:]
    concepts_file, cstruct_file = check.stdout.split()
    assert concepts_file.startswith(purelib) and cstruct_file.startswith(purelib)

    cli = env_dir / "bin" / "concepts"
    out = tmp_path / "built"
    build = subprocess.run([str(cli), "build", "--from", str(ROOT / "examples" / "cvat_export"), "--size", "64", "-o", str(out)],
                           cwd=tmp_path, capture_output=True, text=True, env=env, timeout=300)
    assert build.returncode == 0, build.stderr[-3000:]
    validate = subprocess.run([str(cli), "validate", str(out)], cwd=tmp_path, capture_output=True, text=True, env=env, timeout=300)
    assert validate.returncode == 0, validate.stdout[-3000:] + validate.stderr[-3000:]
    assert (out / "c_color.csv").is_file()  # the colour table shipped in the wheel was found
