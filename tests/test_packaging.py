"""The `misp2sentinel` console command: the wheel carries every module the tool imports."""
from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import zipfile

from tests.support import ROOT

NOT_MODULES = {"config.py", "demo.py"}  # the operator's settings file and the demo driver


def test_wheel_installs_a_working_console_command(tmp_path):
    source = tmp_path / "src"  # build from a copy: setuptools writes build/ and egg-info beside the sources
    source.mkdir()
    for path in [*ROOT.glob("*.py"), ROOT / "pyproject.toml", ROOT / "README.md"]:
        shutil.copy(path, source)
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation",
                    "--quiet", "-w", str(tmp_path / "dist")], check=True, cwd=tmp_path)
    (wheel,) = (tmp_path / "dist").glob("misp2sentinel-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {path.name for path in ROOT.glob("*.py")} - NOT_MODULES
    assert shipped <= names
    for module in shipped:  # nothing imports a top-level module the wheel lacks
        tree = ast.parse((ROOT / module).read_text())
        imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
        imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
        assert not {f"{name}.py" for name in imported if (ROOT / f"{name}.py").exists()} - names, module
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--quiet", "--target", str(target), str(wheel)], check=True)
    command = target / "bin" / "misp2sentinel"
    result = subprocess.run([sys.executable, str(command), "--help"], capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(target)}, cwd=tmp_path)
    assert result.returncode == 0 and "exit codes:" in result.stdout and "--check" in result.stdout
