"""Files in log_dir and state_dir: only the tool's own are pruned, nothing is reached through a
symlink, and tool folders are owner-only (issue 10, item 5). Runs the CLI as cron does."""
from __future__ import annotations

import os
import stat
import time

import constants as C
import private_files
import request_log
from constants import ExitCode
from tests.support import run_process, write_config

OLD = time.time() - 40 * 86400


def aged(path, text="{}"):
    path.write_text(text)
    os.utime(path, (OLD, OLD))
    return path


def test_pruning_deletes_only_the_tools_own_old_files(standins, tmp_path):
    config = write_config(tmp_path, standins, log_retention_days=30)
    logs = tmp_path / "logs"
    logs.mkdir(mode=0o700)
    ours = aged(logs / "misp2sentinel_20200101T000000.000000Z_error_00001.json")
    foreign = [aged(logs / name) for name in ("backup_2020_01.json", "a_b_c.json.gz", "nginx_access_log.jsonl",
                                              "20200101T000000.000000Z_error_00001.json")]
    elsewhere = aged(tmp_path / "precious.json")
    link = logs / "misp2sentinel_20200101T000000.000000Z_link_00002.json"
    link.symlink_to(elsewhere)
    os.utime(link, (OLD, OLD), follow_symlinks=False)
    run = run_process(config)
    assert run.code == ExitCode.OK, run.err
    assert not ours.exists()
    assert all(path.exists() for path in foreign) and elsewhere.exists() and link.is_symlink()
    mine = [path for path in logs.iterdir() if path not in foreign and path != link and path.name != C.LAST_RUN_FILE]
    assert all(path.name.startswith("misp2sentinel_") for path in mine)  # last-run.json: one fixed file, never pruned


def test_symlinked_tool_folders_are_refused(standins, tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "logs").symlink_to(real)
    run = run_process(write_config(tmp_path, standins))
    assert run.code == ExitCode.CONFIG and len(run.err.splitlines()) == 1 and "symlink" in run.err, run.err
    assert list(real.iterdir()) == []
    second = tmp_path / "second"
    second.mkdir()
    (second / "state").symlink_to(real)
    run = run_process(write_config(second, standins))
    assert run.code == ExitCode.CONFIG and "symlink" in run.err and "state" in run.err, run.err
    assert list(real.iterdir()) == []


def test_group_writable_folders_are_tightened(standins, tmp_path):
    for name in ("logs", "state"):
        (tmp_path / name).mkdir()
        os.chmod(tmp_path / name, 0o777)
    assert run_process(write_config(tmp_path, standins)).code == ExitCode.OK
    for name in ("logs", "state"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o700, name


def test_planted_state_and_lock_symlinks_are_refused(standins, tmp_path):
    config = write_config(tmp_path, standins)
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    victim = aged(tmp_path / "victim.txt", "keep me")
    name = f"graph_{standins.tenant}_{standins.client_id}".lower()
    for suffix in ("lock", "sqlite"):
        planted = state / f"{name}.{suffix}"
        planted.symlink_to(victim)
        run = run_process(config)
        assert run.code == ExitCode.CONFIG and "symlink" in run.err, (suffix, run.err)
        assert victim.read_text() == "keep me"
        planted.unlink()


def test_explain_and_check_refuse_planted_state_symlinks_too(standins, tmp_path, fixture_events):
    """--explain read the state through a planted link (it resolved the path), a dangling one
    read as an empty state, and --check passed while every sync would refuse the link."""
    config = write_config(tmp_path, standins)
    assert run_process(config).code == ExitCode.OK
    state = tmp_path / "state"
    name = f"graph_{standins.tenant}_{standins.client_id}".lower()
    real = state / f"{name}.sqlite"
    moved = real.rename(tmp_path / "elsewhere.sqlite")
    uuid = fixture_events[0]["Event"]["Attribute"][0]["uuid"]
    for suffix, target in (("sqlite", moved), ("sqlite", tmp_path / "gone"), ("lock", moved)):
        planted = state / f"{name}.{suffix}"
        planted.unlink(missing_ok=True)
        planted.symlink_to(target)
        for args in (("--explain", uuid), ("--check",)) if suffix == "sqlite" else (("--check",),):  # --explain takes no lock
            run = run_process(config, *args)
            assert run.code == ExitCode.CONFIG and "symlink" in run.out + run.err, (suffix, target, args, run.out + run.err)
        planted.unlink()


def test_pruning_beside_another_run_sharing_log_dir(tmp_path, monkeypatch):
    """Two configs sharing one log_dir prune at the same time: a file the other run removed
    between listing and checking it raised FileNotFoundError, and the run stopped (exit 2)."""
    logs = tmp_path / "logs"
    logs.mkdir(mode=0o700)
    gone, kept = (aged(logs / f"{C.LOG_FILE_PREFIX}{name}_error_00001.json") for name in ("a", "b"))

    def pruned_by_the_other_run(path):
        if path == gone:
            path.unlink()
        return private_files.is_tool_file(path)
    monkeypatch.setattr(request_log, "is_tool_file", pruned_by_the_other_run)
    request_log.RequestLog(logs, False, False).prune(30)  # no FileNotFoundError
    assert not kept.exists()
