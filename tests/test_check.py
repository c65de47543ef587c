"""--check against the stand-ins: every line passes on a good setup; each broken setting gives
the line that fails, with its fix, and never a secret."""
from __future__ import annotations

import constants as C
from constants import ErrorCause, ExitCode
from tests.support import run_cli, write_config


def lines(run) -> list[str]:
    return [line for line in run.out.splitlines() if line[:1] in "\u2713\u2717"]


def test_every_line_passes_on_a_working_setup(standins, tmp_path, capsys):
    run = run_cli(write_config(tmp_path, standins, target=["graph", "sentinel"]), "--check", capsys=capsys)
    assert run.code == ExitCode.OK, run.out
    assert len(lines(run)) == 8 and all(line.startswith("\u2713") for line in lines(run))
    assert "\u2713 folders: log_dir" in run.out
    assert "4 events match" in run.out and "MISP 2.5.1" in run.out and "TLS verified" in run.out
    assert standins.graph.indicators == {} and standins.sentinel.objects == {}  # nothing written


def test_wrong_secret_names_the_code_and_the_fix(standins, tmp_path, capsys):
    config = write_config(tmp_path, standins)
    (tmp_path / ".env").write_text(f"MISP_KEY={standins.misp.key}\nAZURE_CLIENT_SECRET=the-secret-id-not-value\n")
    run = run_cli(config, "--check", capsys=capsys)
    assert run.code == ExitCode.MICROSOFT
    failed = [line for line in lines(run) if line.startswith("\u2717")]
    assert len(failed) == 1 and "AADSTS7000215" in failed[0]
    assert "copy the secret's Value (not its Secret ID)" in run.out
    assert "the-secret-id-not-value" not in run.out + run.err


def test_unknown_tenant_and_missing_role_names_are_explained(standins, tmp_path, capsys):
    config = write_config(tmp_path, standins, target="sentinel", workspace_name="",
                          graph_auth={"tenant": "00000000-0000-0000-0000-00000000dead", "client_id": standins.client_id})
    run = run_cli(config, "--check", capsys=capsys)
    assert run.code == ExitCode.MICROSOFT and "check AZURE_TENANT_ID" in run.out
    config = write_config(tmp_path, standins, target="sentinel", workspace_name="")
    run = run_cli(config, "--check", capsys=capsys)
    assert run.code == ExitCode.MICROSOFT
    assert "workspace_name" in lines(run)[-1] and "Microsoft Sentinel Contributor" in run.out


def test_misp_problems_come_with_their_fix(standins, tmp_path, capsys, monkeypatch):
    config = write_config(tmp_path, standins)
    (tmp_path / ".env").write_text(f"MISP_KEY=wrong\nAZURE_CLIENT_SECRET={standins.client_secret}\n")
    run = run_cli(config, "--check", capsys=capsys)
    assert run.code == ExitCode.MISP and "fix: check MISP_KEY" in run.out
    (tmp_path / ".env").write_text(f"MISP_KEY={standins.misp.key}\nAZURE_CLIENT_SECRET={standins.client_secret}\n")
    monkeypatch.delenv("REQUESTS_CA_BUNDLE")
    run = run_cli(config, "--check", capsys=capsys)
    assert run.code == ExitCode.MISP and "trust the MISP server's CA" in run.out


def test_bad_config_is_the_first_and_only_line(standins, tmp_path, capsys):
    run = run_cli(write_config(tmp_path, standins, passiveOnly="False"), "--check", capsys=capsys)
    assert run.code == ExitCode.CONFIG and len(lines(run)) == 1 and "passiveOnly" in lines(run)[0]


def test_a_failed_permission_read_gets_the_fix_for_its_cause(standins, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("ms_client.MAX_WAIT_SECONDS", 0.0)
    config = write_config(tmp_path, standins)
    standins.graph.fail_next(403, path_suffix="/tiIndicators")
    run = run_cli(config, "--check", capsys=capsys)
    assert run.code == ExitCode.MICROSOFT
    assert "fix: add the application permission ThreatIndicators.ReadWrite.OwnedBy" in run.out
    standins.graph.fail_next(503, times=10, path_suffix="/tiIndicators")
    run = run_cli(config, "--check", capsys=capsys)
    (fix,) = [line for line in run.out.splitlines() if "fix:" in line]
    assert run.code == ExitCode.MICROSOFT and fix.strip() == "fix: " + C.PROBE_FIXES[ErrorCause.SERVICE_FAILED]
