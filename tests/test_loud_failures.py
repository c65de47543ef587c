"""Items 1 and 2 of issue 10: a `--quiet` cron run that does not exit 0 says why on stderr, and
every run, failed or not, leaves a run report per target and an up-to-date last-run.json."""
from __future__ import annotations

import datetime as dt
import fcntl
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from constants import LAST_RUN_FILE, VERSION, ExitCode
from settings import load_settings
from sync import state_paths
from tests.support import ROOT, run_process, write_config

NO_WAIT = {"Retry-After": "0"}


def rejected(standins, config):
    standins.graph.reject_value("8.8.8.8", "Indicator value is on the allow list")
    standins.misp.events.append({"Event": {
        "uuid": "11111111-0000-4000-8000-000000000001", "info": "Rejection test", "published": True,
        "timestamp": "1700000000", "publish_timestamp": "1700000000",
        "Attribute": [{"uuid": "11111111-0000-4000-8000-0000000000a1", "type": "ip-dst", "value": "8.8.8.8", "to_ids": True}],
    }})


def undelivered(standins, config):
    standins.graph.fail_next(200, '{"value": [{"id": "cut', headers=NO_WAIT, times=100, path_suffix="submitTiIndicators")


def mass_delete(standins, config):
    assert run_process(config).code == ExitCode.OK
    standins.misp.events[:] = standins.misp.events[:1]


def misp_down(standins, config):
    standins.misp.fail_page(None, "500")


def locked(standins, config):
    settings = load_settings(config)
    lock, _ = state_paths(settings, settings.targets[0])
    lock.parent.mkdir(mode=0o700, exist_ok=True)
    holder = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(holder, fcntl.LOCK_EX)  # released when the test process ends


@pytest.mark.parametrize(("cause", "code", "named"), [
    (rejected, ExitCode.REJECTED, "rejected"),
    (misp_down, ExitCode.MISP, "MISP server error"),
    (undelivered, ExitCode.MICROSOFT, "not delivered"),
    (mass_delete, ExitCode.SAFETY_VALVE, "--allow-mass-delete"),
    (locked, ExitCode.LOCKED, "another misp2sentinel run"),
])
def test_quiet_run_names_every_non_zero_outcome_on_stderr(standins, tmp_path, cause, code, named):
    config = write_config(tmp_path, standins)
    cause(standins, config)
    run = run_process(config, "--quiet")
    assert run.code == code, run.err
    assert run.out == "" and run.err.startswith("misp2sentinel: error:") and named in run.err
    report = run.logs("run-report")[-1]
    assert report["exit_code"] == code and report["error"] and "\n" not in report["error"]
    assert report["version"] == VERSION and report["started"] <= report["ended"]
    status = json.loads((run.log_dir / LAST_RUN_FILE).read_text())
    assert status[report["target"]]["last_exit_code"] == code


def test_misp_failure_reports_its_error_and_keeps_the_last_success(standins, tmp_path):
    config = write_config(tmp_path, standins)
    good = run_process(config)
    assert good.code == ExitCode.OK
    status_file = good.log_dir / LAST_RUN_FILE
    target = good.logs("run-report")[-1]["target"]
    succeeded = json.loads(status_file.read_text())[target]["last_success"]
    assert oct(status_file.stat().st_mode & 0o777) == "0o600" and succeeded
    standins.misp.fail_page(None, "500")
    failed = run_process(config)
    assert failed.code == ExitCode.MISP and failed.err.count("\n") == 1
    report = failed.logs("run-report")[-1]
    assert "MISP server error" in report["error"] and report["exit_code"] == ExitCode.MISP
    status = json.loads(status_file.read_text())[target]
    assert status["last_exit_code"] == ExitCode.MISP and status["last_success"] == succeeded
    assert dt.datetime.fromisoformat(status["last_run"]) >= dt.datetime.fromisoformat(succeeded)


def test_config_failure_after_loading_still_writes_a_report(standins, tmp_path):
    config = write_config(tmp_path, standins)
    (tmp_path / ".env").write_text(f"MISP_KEY={standins.misp.key}\n")  # no Azure secret
    run = run_process(config, "--quiet")
    assert run.code == ExitCode.CONFIG and run.err.count("\n") == 1
    (report,) = run.logs("run-report")
    assert report["exit_code"] == ExitCode.CONFIG and report["error"].startswith("configuration:")


@pytest.mark.parametrize("previous", ["[1, 2]", '"ok"', '{"graph tenant %s": "ok"}'], ids=["list", "string", "entry"])
def test_a_last_run_file_of_another_shape_is_started_afresh(standins, tmp_path, previous):
    """Valid JSON that is not last-run.json's shape (edited by hand, or another tool's) made
    every run an internal error (exit 5) while writing the reports."""
    config = write_config(tmp_path, standins)
    (tmp_path / "logs").mkdir(mode=0o700)
    (tmp_path / "logs" / LAST_RUN_FILE).write_text(previous % standins.tenant if "%s" in previous else previous)
    standins.misp.fail_page(None, "500")
    run = run_process(config, "--quiet")
    assert run.code == ExitCode.MISP and "please report" not in run.err, run.err
    status = json.loads((run.log_dir / LAST_RUN_FILE).read_text())
    assert status[f"graph tenant {standins.tenant}"]["last_exit_code"] == ExitCode.MISP


def test_a_delete_that_leaves_ids_says_so_on_stderr(standins, tmp_path):
    """-d exiting 1 printed its per-id lines on stdout only: nothing on stderr named the failure."""
    run = run_process(write_config(tmp_path, standins), "--quiet", "-d", "no-such-graph-id")
    assert run.code == ExitCode.REJECTED
    assert run.err == f"misp2sentinel: error: graph tenant {standins.tenant}: 1 of 1 ids not deleted (details under logs/)\n"


@pytest.mark.parametrize("body", [
    "<html>\n<head><title>400 Bad Request</title></head>\n<body>\x1b[31mproxy</body>\n</html>\n",
    {"error": {"code": "BadRequest", "message": "line one\nline two\x1b[2J"}},
], ids=["html", "json"])
def test_a_multi_line_answer_from_microsoft_is_one_line(standins, tmp_path, body):
    """A proxy's HTML page (or a message with newlines) came through whole: stderr and the
    report's error ran over several lines, and the page's ESC bytes reached the terminal."""
    standins.graph.fail_next(400, body, times=100)
    run = run_process(write_config(tmp_path, standins), "--quiet")
    assert run.code == ExitCode.MICROSOFT and run.err.count("\n") == 1 and "\x1b" not in run.err, run.err
    error = run.logs("run-report")[-1]["error"]
    assert "\n" not in error and "\x1b" not in error and "\\x1b" in error


def test_a_refused_token_is_one_clean_line(standins, tmp_path):
    """Entra's error_description ends its first line with \\r\\n: the \\r was kept in the run
    report's error and on stderr."""
    config = write_config(tmp_path, standins)
    (tmp_path / ".env").write_text(f"MISP_KEY={standins.misp_key}\nAZURE_CLIENT_SECRET=wrong\n")
    completed = subprocess.run([sys.executable, str(ROOT / "script.py"), "--config", str(config), "--quiet"],
                               capture_output=True, cwd="/")
    assert completed.returncode == ExitCode.MICROSOFT and b"AADSTS7000215" in completed.stderr
    assert b"\r" not in completed.stderr
    report = json.loads(sorted((tmp_path / "logs").glob("*_run-report_*.json"))[-1].read_text())
    assert "\r" not in report["error"] and report["error"].endswith("'.")


def test_a_run_stopped_by_sigterm_leaves_its_report(standins, tmp_path):
    """systemd's stop (or `timeout`) sends SIGTERM: the run died at once, with no run report and
    a last-run.json that still showed the run before."""
    standins.graph.latency = 0.5
    config = write_config(tmp_path, standins)
    process = subprocess.Popen([sys.executable, str(ROOT / "script.py"), "--config", str(config), "--quiet"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd="/")
    deadline = time.monotonic() + 30
    while not list((tmp_path / "state").glob("*.lock")) and time.monotonic() < deadline:
        time.sleep(0.05)  # the run has started (the handler is set before any lock is taken)
    time.sleep(0.3)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == ExitCode.INTERRUPTED and err == "misp2sentinel: error: interrupted\n", err
    report = json.loads(sorted((tmp_path / "logs").glob("*_run-report_*.json"))[-1].read_text())
    assert report["exit_code"] == ExitCode.INTERRUPTED
    status = json.loads((tmp_path / "logs" / LAST_RUN_FILE).read_text())
    assert status[report["target"]]["last_exit_code"] == ExitCode.INTERRUPTED
