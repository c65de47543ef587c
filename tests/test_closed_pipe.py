"""Item 4 of issue 10: `misp2sentinel -r | head -1` is not an error."""
from __future__ import annotations

import subprocess
import sys

import pytest

from constants import ExitCode
from tests.support import ROOT, write_config


def closed_stdout(config, *args: str) -> subprocess.CompletedProcess[bytes]:
    """The tool with a stdout whose reader has gone before anything is written (as `| head -1`
    after its first line, but with no race)."""
    process = subprocess.Popen([sys.executable, str(ROOT / "script.py"), "--config", str(config), *args],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd="/")
    process.stdout.close()
    stderr = process.stderr.read()
    return subprocess.CompletedProcess(process.args, process.wait(timeout=120), b"", stderr)


@pytest.mark.parametrize("args", [("-r",), ("-r", "--format", "csv"), ("--dry-run",), ("--check",), ()])
def test_closed_stdout_ends_quietly(standins, tmp_path, args):
    config = write_config(tmp_path, standins)
    assert subprocess.run([sys.executable, str(ROOT / "script.py"), "--config", str(config), "--quiet"],
                          cwd="/").returncode == ExitCode.OK
    result = closed_stdout(config, *args)
    assert result.stderr == b"" and result.returncode == ExitCode.OK
    assert not list((tmp_path / "logs").glob("*_error_*"))
