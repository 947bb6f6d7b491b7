"""`pip install .` into a fresh environment, then `import kcp` from a folder that is not the checkout."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_package_installs_and_loads_digits_from_another_folder(tmp_path):
    # A copy of what the build needs, so the build leaves nothing in the checkout.
    src = tmp_path / "src"
    shutil.copytree(ROOT / "kcp", src / "kcp", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "requirements.txt", "README.md"):
        shutil.copy(ROOT / name, src / name)
    venv = tmp_path / "venv"
    # --system-site-packages gives the venv torch & co. without a download; --without-pip makes `-m pip` the
    # system's pip with the system's setuptools (a venv's bundled setuptools is too old to build a wheel).
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", str(src)],
                   check=True, cwd=tmp_path, capture_output=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    probe = ("import kcp, kcp.zoo as z; m = z.load_model('digits-cnn'); "
             "print(kcp.__file__); print(m.name, len(z.conv_layers(m)))")
    done = subprocess.run([str(python), "-c", probe], cwd=elsewhere, capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert done.returncode == 0, done.stderr
    where, loaded = done.stdout.split("\n")[:2]
    assert Path(where).is_relative_to(venv), f"imported {where}, not the installed copy"
    assert loaded.startswith("digits-cnn ") and int(loaded.split()[1]) >= 4
