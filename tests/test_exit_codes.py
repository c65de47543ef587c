"""Item 11 of issue 10: one exit-code table (constants.ExitCode) that `--help` and README show."""
from __future__ import annotations

import re
import subprocess
import sys

import constants as C
from constants import ExitCode
from tests.support import ROOT


def readme_exit_codes() -> dict[int, str]:
    """The rows of README's "### Exit codes" table: code -> meaning."""
    section = (ROOT / "README.md").read_text(encoding="utf-8").split("### Exit codes", 1)[1].split("\n\n", 2)[1]
    rows = [re.fullmatch(r"\| (\d+) \| (.*) \|", line) for line in section.splitlines()[2:]]
    return {int(row[1]): row[2] for row in rows if row}


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(ROOT / "script.py"), *args], capture_output=True, text=True, cwd="/")


def test_readme_exit_code_table_is_the_code_table():
    assert readme_exit_codes() == {code.value: code.description for code in ExitCode}


def test_help_epilog_lists_every_exit_code_with_its_meaning():
    help_text = " ".join(cli("--help").stdout.split())
    for code in ExitCode:
        assert f"{code.value} {code.description.replace('`', '')}" in help_text


def test_version_prints_the_one_version():
    result = cli("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"script.py {C.VERSION}"
    assert 'attr = "constants.VERSION"' in (ROOT / "pyproject.toml").read_text()
