"""Item 12 of issue 10: README's defaults and shipped units are the ones the code uses."""
from __future__ import annotations

import ast
import re
import subprocess
import sys

import constants as C
from constants import ExitCode
from settings import README_END, README_START, load_settings, readme_table
from tests.support import ROOT, run_process, write_config

README = (ROOT / "README.md").read_text(encoding="utf-8")


def readme_default(name: str) -> str:
    """The Default column of README's Configuration table for one setting."""
    found = re.search(rf"^\| `{name}` \| `([^`]*)`", README, re.MULTILINE)
    assert found, f"README's Configuration table has no row for {name}"
    return found[1]


def unit_settings() -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in (ROOT / "contrib" / "misp2sentinel.service").read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            settings.setdefault(key, []).append(value)
    return settings


def test_default_event_filters_are_the_safe_ones_readme_documents(tmp_path):
    (tmp_path / "config.py").write_text("misp_domain = 'https://misp.example'\n")
    settings = load_settings(tmp_path / "config.py", environ={})
    assert settings.misp_event_filters == (C.DEFAULT_MISP_EVENT_FILTERS,)
    assert ast.literal_eval(readme_default("misp_event_filters")) == C.DEFAULT_MISP_EVENT_FILTERS
    assert {"published", "to_ids", "enforceWarninglist"} <= C.DEFAULT_MISP_EVENT_FILTERS.keys()


def test_check_prints_the_filters_in_effect(standins, tmp_path):
    run = run_process(write_config(tmp_path, standins), "--check")
    assert run.code == ExitCode.OK, run.out
    assert repr(C.DEFAULT_MISP_EVENT_FILTERS) in run.out


def test_systemd_unit_starts_on_a_fresh_install_and_fails_on_every_error():
    unit = unit_settings()
    assert "SuccessExitStatus" not in unit
    env_file = unit["EnvironmentFile"][0].lstrip("-")
    assert f"/dev/null {env_file}" in README  # the install step creates exactly that file
    config = re.search(r"--config (\S+)/config\.py", unit["ExecStart"][0])
    assert config, unit["ExecStart"]
    config_dir = config[1]
    paths = [path for value in unit.get("ReadWritePaths", []) for path in value.split()]
    assert f"-{config_dir}" in paths or {"StateDirectory", "LogsDirectory"} <= unit.keys()
    assert all(path.startswith("-") for path in paths)  # a missing folder must not stop the unit starting


def test_readme_settings_section_is_the_one_the_settings_table_makes():
    """Issue 12: README's settings table (name, default, doc) is generated, never edited by hand."""
    start, end = README.index(README_START), README.index(README_END) + len(README_END)
    assert README[start:end] + "\n" == readme_table(), "run: python settings.py --readme-table, paste it into README.md"


def test_settings_py_prints_the_readme_table():
    run = subprocess.run([sys.executable, str(ROOT / "settings.py"), "--readme-table"], capture_output=True, text=True,
                         check=False, cwd=ROOT)
    assert (run.returncode, run.stdout) == (ExitCode.OK, readme_table())
    assert "| `allow_broad_cidr` | `False` | send CIDR blocks broader than /16 (IPv4) or /32 (IPv6)" in run.stdout
