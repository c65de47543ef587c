"""Item 4 of issue 10: `misp2sentinel -r | head -1` is not an error."""
from __future__ import annotations

import shlex
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
    assert process.stdout is not None and process.stderr is not None
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


def test_a_closed_pipe_leaves_no_target_undone(standins, tmp_path):
    """-d and --rebuild-state stopped at their first line when stdout's reader had gone: the
    other target's ids were neither revoked nor rebuilt, and a failed delete exited 0."""
    config = write_config(tmp_path, standins, target=["graph", "sentinel"])
    assert subprocess.run([sys.executable, str(ROOT / "script.py"), "--config", str(config), "--quiet"],
                          cwd="/").returncode == ExitCode.OK
    stix = sorted(key for key, item in standins.sentinel.objects.items() if not item.get("revoked"))[0]
    result = closed_stdout(config, "-d", "no-such-graph-id", stix)
    assert result.returncode == ExitCode.REJECTED and b"1 of 1 ids not deleted" in result.stderr, result.stderr
    assert standins.sentinel.objects[stix]["revoked"] is True
    states = sorted((tmp_path / "state").glob("*.sqlite"))
    for path in states:
        path.unlink()
    result = closed_stdout(config, "--rebuild-state")
    assert result.returncode == ExitCode.OK and result.stderr == b""
    assert sorted((tmp_path / "state").glob("*.sqlite")) == states


@pytest.mark.parametrize("closed", [">&-", "2>&-"], ids=["stdout", "stderr"])
def test_a_stream_closed_by_the_crontab_is_not_an_error(standins, tmp_path, closed):
    """`>&-` or `2>&-` starts Python with sys.stdout or sys.stderr None: the run ended in a
    traceback with exit 1 (which the exit-code table says is 'rejected')."""
    config = write_config(tmp_path, standins)
    command = f"{shlex.quote(sys.executable)} {shlex.quote(str(ROOT / 'script.py'))} --config {shlex.quote(str(config))} {closed}"
    result = subprocess.run(command, shell=True, capture_output=True, text=True, cwd="/")
    assert result.returncode == ExitCode.OK and "Traceback" not in result.stderr, result.stderr
    assert result.stderr == "" and (result.stdout == "") == (closed == ">&-")
    assert not list((tmp_path / "logs").glob("*_error_*"))
