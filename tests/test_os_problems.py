"""Item 3 of issue 10: operating-system problems are configuration errors (exit 2, one line that
names the path and the fix), not bugs; exit 5 is kept for bugs, with the traceback in its file."""
from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from constants import ExitCode
from settings import load_settings
from sync import state_paths
from tests.support import ROOT, run_cli, run_process, write_config


@contextlib.contextmanager
def mounted(directory: Path, *options: str):
    """A tmpfs (or a read-only bind) at `directory` for the test; skipped where mount is not allowed."""
    directory.mkdir(exist_ok=True)
    if subprocess.run(["mount", *options, str(directory)], capture_output=True).returncode:
        pytest.skip("mount is not allowed here (needs root); the case cannot be staged")
    try:
        yield directory
    finally:
        subprocess.run(["umount", "-l", str(directory)], check=False)


def assert_config_error(run, *named: str) -> None:
    assert run.code == ExitCode.CONFIG, run.err
    assert run.err.count("\n") == 1 and "Traceback" not in run.err and "internal error" not in run.err
    for text in named:
        assert text in run.err


def test_unreadable_env_file_is_a_config_error(tmp_path):
    """Root reads any file, so the tool runs without the capabilities that let it (setpriv)."""
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("needs root and setpriv to stage a file its reader may not read")
    (tmp_path / "config.py").write_text("misp_domain = 'https://misp.example'\n")
    (tmp_path / ".env").write_text("MISP_KEY=x\n")
    (tmp_path / ".env").chmod(0)
    result = subprocess.run(["setpriv", "--bounding-set", "-dac_override,-dac_read_search", sys.executable,
                             str(ROOT / "script.py"), "--config", str(tmp_path / "config.py")],
                            capture_output=True, text=True, cwd="/")
    assert result.returncode == ExitCode.CONFIG, result.stderr
    assert result.stderr.count("\n") == 1 and str(tmp_path / ".env") in result.stderr and "readable" in result.stderr


def test_env_file_with_a_byte_order_mark_is_a_config_error(tmp_path):
    """The BOM became part of the first name, so the key it set was missing: "misp_key is
    empty: set it in config.py or MISP_KEY" while .env set it."""
    (tmp_path / "config.py").write_text("misp_domain = 'https://misp.example'\n")
    (tmp_path / ".env").write_text("\ufeffMISP_KEY=x\n", encoding="utf-8")
    run = run_process(tmp_path / "config.py")
    assert_config_error(run, str(tmp_path / ".env"), "byte-order mark")


@pytest.mark.parametrize(("content", "named"), [
    ("\ufeffmisp_domain = 'https://misp.example'\n".encode("utf-8"), "byte-order mark"),
    ("misp_domain = 'https://misp.example'  # caf\xe9\n".encode("latin-1"), "UTF-8"),
    (("misp_event_filters = " + "[" * 5000 + "]" * 5000 + "\n").encode(), "nested"),
], ids=["bom", "latin-1", "deep"])
def test_config_file_encoding_and_nesting_are_config_errors(tmp_path, content, named):
    config = tmp_path / "config.py"
    config.write_bytes(content)
    run = run_process(config)
    assert_config_error(run, "config.py", named)


def test_dangling_symlink_and_old_file_in_log_dir(standins, tmp_path):
    config = write_config(tmp_path, standins, log_retention_days=1)
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "20200101T000000.000000Z_error_00001.json").symlink_to(tmp_path / "gone")
    run = run_process(config)
    assert run.code in (ExitCode.OK, ExitCode.CONFIG), run.err  # skipping the link is as good as naming it
    assert "Traceback" not in run.err and "internal error" not in run.err
    if run.code == ExitCode.CONFIG:
        assert_config_error(run, str(logs))


def test_read_only_log_dir_with_an_old_file_to_prune(standins, tmp_path):
    config = write_config(tmp_path, standins, log_retention_days=1)
    logs = tmp_path / "logs"
    logs.mkdir()
    old = logs / "20200101T000000.000000Z_error_00001.json"
    old.write_text("{}")
    os.utime(old, (time.time() - 10 * 86400,) * 2)
    with mounted(logs, "--bind", str(logs)):
        subprocess.run(["mount", "-o", "remount,bind,ro", str(logs)], check=True)
        run = run_process(config)
    assert_config_error(run, str(logs))


def test_read_only_state_dir(standins, tmp_path):
    config = write_config(tmp_path, standins)
    with mounted(tmp_path / "state", "-t", "tmpfs", "-o", "ro", "tmpfs"):
        run = run_process(config)
    assert_config_error(run, str(tmp_path / "state"))


def fill(directory: Path) -> None:
    with contextlib.suppress(OSError), open(directory / "filler", "wb") as handle:
        while True:
            handle.write(b"\0" * 4096)
            handle.flush()


def test_full_disk_under_log_dir(standins, tmp_path):
    config = write_config(tmp_path, standins, write_post_json=True)
    with mounted(tmp_path / "logs", "-t", "tmpfs", "-o", "size=64k", "tmpfs") as logs:
        fill(logs)
        run = run_process(config)
    assert_config_error(run, str(tmp_path / "logs"), "space")


def test_full_disk_under_log_dir_while_writing_skipped_attributes(standins, tmp_path):
    """Without request files the skipped-attributes file is the first to hit the full disk, as
    a bare OSError when flushed: it was exit 5, "please report"."""
    config = write_config(tmp_path, standins, write_post_json=False)
    with mounted(tmp_path / "logs", "-t", "tmpfs", "-o", "size=64k", "tmpfs") as logs:
        fill(logs)
        run = run_process(config)
    assert_config_error(run, "skipped-graph", "No space left")


def test_full_disk_under_state_dir(standins, tmp_path):
    config = write_config(tmp_path, standins)
    with mounted(tmp_path / "state", "-t", "tmpfs", "-o", "size=64k", "tmpfs") as state:
        fill(state)
        (state / "filler").unlink()
        (state / "filler").write_bytes(b"\0" * 60 * 1024)
        run = run_process(config)
        assert not list(state.glob("*.unreadable-*"))  # a sound store is not moved aside for a full disk
    assert_config_error(run, str(state), "disk space")


def test_missing_ca_bundle_is_a_config_error(standins, tmp_path):
    config = write_config(tmp_path, standins, misp_verifycert=str(tmp_path / "no-such-ca.pem"))
    run = run_process(config)
    assert run.code in (ExitCode.CONFIG, ExitCode.MISP), run.err
    assert run.err.count("\n") == 1 and "no-such-ca.pem" in run.err and "internal error" not in run.err


@pytest.mark.parametrize("variable", ["REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"])
def test_a_ca_bundle_variable_naming_a_missing_file_is_a_config_error(standins, tmp_path, variable):
    """requests found it only when connecting, as an OSError: exit 5, "please report"."""
    config = write_config(tmp_path, standins)
    for args in ((), ("--check",)):
        run = run_process(config, *args, env={"REQUESTS_CA_BUNDLE": "", variable: str(tmp_path / "gone.pem")})
        assert run.code == ExitCode.CONFIG and "please report" not in run.out + run.err, run.out + run.err
        assert f"{variable} names" in run.out + run.err and "gone.pem" in run.out + run.err


def test_state_file_damaged_mid_file_is_moved_aside_and_rebuilt(standins, tmp_path):
    config = write_config(tmp_path, standins)
    assert run_process(config).code == ExitCode.OK
    settings = load_settings(config)
    _, store = state_paths(settings, settings.targets[0])
    data = bytearray(store.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 4096] = b"\xff" * 4096
    store.write_bytes(bytes(data))
    run = run_process(config)
    assert run.code in (ExitCode.OK, ExitCode.CONFIG), run.err
    assert "internal error" not in run.err and "Traceback" not in run.err


def test_a_bug_is_exit_5_with_one_line_and_the_traceback_in_its_error_file(standins, tmp_path, capsys, monkeypatch):
    import script

    def broken(*args, **kwargs):
        raise TypeError("a bug")
    monkeypatch.setattr(script, "run_all", broken)
    run = run_cli(write_config(tmp_path, standins), capsys=capsys)
    assert run.code == ExitCode.INTERNAL and run.err.count("\n") == 1 and "internal error TypeError" in run.err
    (error,) = [e for e in run.logs("error") if e["context"] == "internal"]
    assert "Traceback (most recent call last)" in error["traceback"] and "a bug" in error["traceback"]
    assert run.logs("run-report")[-1]["exit_code"] == ExitCode.INTERNAL
