"""Trust per service (issue 10, item 7): misp_ca_bundle trusts a CA for MISP only, and a CA
variable in .env is reported as not honoured instead of being ignored silently."""
from __future__ import annotations

from constants import ExitCode
from tests.support import run_process, write_config


def check_lines(run) -> dict[str, str]:
    return {line[2:].split(":")[0]: line[0] for line in run.out.splitlines() if line[:1] in "\u2713\u2717"}


def test_misp_ca_bundle_trusts_misp_only(standins, tmp_path, monkeypatch):
    monkeypatch.delenv("REQUESTS_CA_BUNDLE")
    run = run_process(write_config(tmp_path, standins), "--check")
    assert check_lines(run)["MISP"] == "\u2717" and "misp_ca_bundle" in run.out
    run = run_process(write_config(tmp_path, standins, misp_ca_bundle=str(standins.ca_bundle_path)), "--check")
    lines = check_lines(run)
    assert lines["MISP"] == "\u2713" and lines["MISP filters"] == "\u2713", run.out
    assert lines["graph"] == "\u2717"  # the stand-ins' Entra uses the same private CA: not trusted by misp_ca_bundle


def test_misp_ca_bundle_and_verifycert_together_are_refused(standins, tmp_path):
    run = run_process(write_config(tmp_path, standins, misp_ca_bundle=str(standins.ca_bundle_path), misp_verifycert=False))
    assert run.code == ExitCode.CONFIG and "not both" in run.err


def test_requests_ca_bundle_in_dotenv_is_reported_as_not_honoured(standins, tmp_path, monkeypatch):
    monkeypatch.delenv("REQUESTS_CA_BUNDLE")
    config = write_config(tmp_path, standins)
    with (tmp_path / ".env").open("a") as dotenv:
        dotenv.write(f"REQUESTS_CA_BUNDLE={standins.ca_bundle_path}\n")
    run = run_process(config)
    assert run.code != ExitCode.OK  # indeed not honoured: the stand-ins' CA is not trusted
    assert "REQUESTS_CA_BUNDLE is not honoured" in run.err and "misp_ca_bundle" in run.err


def test_requests_ca_bundle_in_dotenv_loaded_by_systemd_is_not_called_unhonoured(standins, tmp_path):
    """The shipped unit's EnvironmentFile= puts .env in the environment, where requests reads
    it for every connection: the warning said it was not honoured while it was."""
    config = write_config(tmp_path, standins)
    with (tmp_path / ".env").open("a") as dotenv:
        dotenv.write(f"REQUESTS_CA_BUNDLE={standins.ca_bundle_path}\n")
    run = run_process(config)  # the fixture's REQUESTS_CA_BUNDLE stands for the one systemd loads
    assert run.code == ExitCode.OK, run.err
    assert "not honoured" not in run.err and "applies to every connection" in run.err and "misp_ca_bundle" in run.err
