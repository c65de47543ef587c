"""Operator conveniences: one event, listing formats, quiet runs, progress only on a terminal."""
from __future__ import annotations

import csv
import fcntl
import io
import os
import pty
import struct
import subprocess
import sys
import termios

from constants import ExitCode
from tests.support import ROOT, expected_external_ids, held_external_ids, run_cli, write_config


def test_event_option_syncs_one_event_and_removes_only_within_it(standins, tmp_path, capsys):
    config = write_config(tmp_path, standins)
    assert run_cli(config, capsys=capsys).code == ExitCode.OK
    target, other = [e["Event"] for e in standins.misp.events if e["Event"].get("published") is True][:2]
    dropped = next(a for a in target["Attribute"] if a.get("to_ids") and a["type"] in ("md5", "sha1", "sha256", "filename"))
    dropped["to_ids"] = False
    other["Attribute"] = []  # would be "gone" in a full run, must stay untouched here
    before = len(standins.graph.requests_seen)
    run = run_cli(config, "--event", target["uuid"], capsys=capsys)
    assert run.code == ExitCode.OK, run.err
    searches = [r.json for r in standins.misp.requests_seen if r.path == "/events/restSearch"]
    assert searches[-1]["uuid"] == target["uuid"] and searches[-1]["published"] is True
    report = run.logs("run-report")[-1]
    assert report["events"] == 1 and report["deleted"] == 1
    assert dropped["uuid"] not in held_external_ids(standins)
    assert expected_external_ids([{"Event": {**other, "Attribute": []}}]) <= held_external_ids(standins)
    # the edit moved the event's timestamp, which its indicators carry: they are updated, the other event's are not
    posts = [r for r in standins.graph.requests_seen[before:] if r.method == "POST"]
    assert {r.path.rsplit("/", 1)[1] for r in posts} == {"deleteTiIndicators", "updateTiIndicators"}
    updated = {item["id"] for r in posts if r.path.endswith("updateTiIndicators") for item in r.json["value"]}
    assert {standins.graph.indicators[graph_id]["externalId"] for graph_id in updated} <= expected_external_ids([{"Event": target}])


def test_read_as_table_and_csv(standins, tmp_path, capsys):
    config = write_config(tmp_path, standins)
    assert run_cli(config, capsys=capsys).code == ExitCode.OK
    rows = list(csv.reader(io.StringIO(run_cli(config, "-r", "--format", "csv", capsys=capsys).out)))
    assert rows[0] == ["target", "id", "externalId", "observable", "tlpLevel", "expirationDateTime"]
    assert {row[2] for row in rows[1:]} == held_external_ids(standins)
    assert all(row[3] for row in rows[1:]) and {row[0] for row in rows[1:]} == {f"graph tenant {standins.tenant}"}
    table = run_cli(config, "-r", "--format", "table", capsys=capsys).out.splitlines()
    assert table[0].split() == ["target", "id", "externalId", "observable", "tlpLevel", "expirationDateTime"]
    assert len(table) == len(rows)


def test_quiet_prints_nothing_on_success_and_the_error_on_failure(standins, tmp_path, capsys):
    config = write_config(tmp_path, standins)
    quiet = run_cli(config, "--quiet", capsys=capsys)
    assert quiet.code == ExitCode.OK and quiet.out == "" and quiet.err == ""
    (tmp_path / ".env").write_text(f"MISP_KEY=wrong\nAZURE_CLIENT_SECRET={standins.client_secret}\n")
    failed = run_cli(config, "--quiet", capsys=capsys)
    assert failed.code == ExitCode.MISP and failed.out == "" and failed.err.startswith("misp2sentinel: error:")


def test_progress_bars_only_on_a_terminal(standins, tmp_path):
    config = write_config(tmp_path, standins)
    env = {**os.environ}
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a real terminal's size
    process = subprocess.Popen([sys.executable, str(ROOT / "script.py"), "--config", str(config)],
                               stdout=subprocess.PIPE, stderr=follower, env=env)
    os.close(follower)
    terminal = b""
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:
            break
        if not chunk:
            break
        terminal += chunk
    assert process.wait(timeout=60) == ExitCode.OK
    assert b"MISP events" in terminal and b"events/s" in terminal
    (tmp_path / "state").rename(tmp_path / "state-old")
    cron = subprocess.run([sys.executable, str(ROOT / "script.py"), "--config", str(config)], capture_output=True, env=env)
    assert cron.returncode == ExitCode.OK and b"MISP events" not in cron.stderr and cron.stderr == b""
