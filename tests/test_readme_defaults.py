"""Item 12 of issue 10: README's defaults and shipped units are the ones the code uses."""
from __future__ import annotations

import ast
import re

import constants as C
from constants import ExitCode
from settings import load_settings
from tests.support import ROOT, run_process, write_config

README = (ROOT / "README.md").read_text(encoding="utf-8")


def readme_default(name: str) -> str:
    """The Default column of README's Configuration table for one setting."""
    return re.search(rf"^\| `{name}` \| `([^`]*)`", README, re.MULTILINE)[1]


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
    config_dir = re.search(r"--config (\S+)/config\.py", unit["ExecStart"][0])[1]
    paths = [path for value in unit.get("ReadWritePaths", []) for path in value.split()]
    assert f"-{config_dir}" in paths or {"StateDirectory", "LogsDirectory"} <= unit.keys()
    assert all(path.startswith("-") for path in paths)  # a missing folder must not stop the unit starting
