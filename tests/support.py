"""Helpers shared by the end-to-end tests: a config file pointing at the stand-ins, and the CLI."""
from __future__ import annotations

import dataclasses
import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import script

ROOT = Path(__file__).resolve().parent.parent


def write_config(directory: Path, standins: Any, **overrides: Any) -> Path:
    """The stand-ins' tool config with small MISP pages, so every test pages several times."""
    return standins.write_tool_config(directory, **{"misp_event_limit_per_page": 2, **overrides})


@dataclasses.dataclass
class Run:
    code: int
    out: str
    err: str
    log_dir: Path

    def logs(self, name: str) -> list[Any]:
        """Parsed JSON files in the log directory of one kind (`<time>_<name>_<sequence>.json`)."""
        return [json.loads(p.read_text()) for p in sorted(self.log_dir.glob(f"*_{name}_*.json"))]

    def log_text(self) -> str:
        return "\n".join(p.read_text() for p in sorted(self.log_dir.glob("*.json")))


def run_cli(config: Path, *args: str, capsys: Any) -> Run:
    """script.main in this process (the stand-ins' CA is trusted through REQUESTS_CA_BUNDLE)."""
    out = io.StringIO()
    code = script.main(["--config", str(config), *args], out=out)
    captured = capsys.readouterr()
    return Run(code, out.getvalue() + captured.out, captured.err, config.parent / "logs")


def run_process(config: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 120) -> Run:
    """script.py as cron runs it: a separate process, its own environment; a run that outlives
    `timeout` seconds fails the test (subprocess.TimeoutExpired)."""
    completed = subprocess.run(
        [sys.executable, str(ROOT / "script.py"), "--config", str(config), *args],
        capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})}, cwd="/",
    )
    return Run(completed.returncode, completed.stdout, completed.stderr, config.parent / "logs")
