"""--check catches what a later sync would fail on, with the right hint (issue 10, item 9)."""
from __future__ import annotations

from datetime import UTC, datetime, timedelta

from constants import ExitCode
from standins.entra import make_client_certificate
from tests.support import run_process, write_config


def failed(run) -> list[str]:
    return [line for line in run.out.splitlines() if line.startswith("\u2717")]


def test_unknown_setting_names_come_with_a_did_you_mean(standins, tmp_path):
    run = run_process(write_config(tmp_path, standins, misp_verifycer=False), "--check")
    assert run.code == ExitCode.CONFIG
    assert failed(run) == ["\u2717 setting: config.py: setting 'misp_verifycer' is not used by this version and is "
                           "ignored (did you mean 'misp_verifycert'?)"]


def test_a_workspace_id_that_is_not_a_guid_is_a_config_error(standins, tmp_path):
    config = write_config(tmp_path, standins, target="sentinel", workspace_id="my-workspace")
    for args in ((), ("--check",)):
        run = run_process(config, *args)
        assert run.code == ExitCode.CONFIG and "is not a GUID" in run.out + run.err


def test_folders_that_cannot_be_written_are_caught(standins, tmp_path):
    (tmp_path / "afile").write_text("not a folder")
    run = run_process(write_config(tmp_path, standins, state_dir="afile/state"), "--check")
    assert run.code == ExitCode.CONFIG
    assert any(line.startswith("\u2717 folders: state_dir") for line in failed(run)), run.out


def certificate_config(standins, tmp_path, days: float, with_key: bool = True):
    certificate = make_client_certificate(not_after=datetime.now(UTC) + timedelta(days=days))
    standins.entra.register_certificate(standins.client_id, certificate.certificate_pem)
    path = tmp_path / "client.pem"
    path.write_bytes((certificate.private_key_pem if with_key else b"") + certificate.certificate_pem)
    return write_config(tmp_path, standins, client_certificate_path=str(path))


def test_a_certificate_expired_or_expiring_within_30_days_is_caught(standins, tmp_path):
    run = run_process(certificate_config(standins, tmp_path, 10), "--check")
    assert run.code == ExitCode.CONFIG and any("\u2717 certificate:" in line and "in 9 days" in line for line in failed(run)), run.out
    run = run_process(certificate_config(standins, tmp_path, -1), "--check")
    assert run.code == ExitCode.CONFIG and any("expired on" in line for line in failed(run)), run.out
    run = run_process(certificate_config(standins, tmp_path, 200), "--check")
    assert run.code == ExitCode.OK and "\u2713 certificate:" in run.out, run.out


def test_a_certificate_without_its_private_key_is_a_config_error(standins, tmp_path):
    config = certificate_config(standins, tmp_path, 200, with_key=False)
    for args in ((), ("--check",)):
        run = run_process(config, *args)
        assert run.code == ExitCode.CONFIG and "has no PEM private key" in run.out + run.err
        assert "authority_host" not in run.out + run.err


def test_an_empty_state_while_the_service_holds_our_indicators_is_caught(standins, tmp_path):
    config = write_config(tmp_path, standins)
    assert run_process(config).code == ExitCode.OK
    assert run_process(config, "--check").code == ExitCode.OK
    for path in (tmp_path / "state").iterdir():
        path.unlink()
    run = run_process(config, "--check")
    assert run.code == ExitCode.CONFIG and "--rebuild-state" in run.out and "rebuilds the state" in run.out
    assert failed(run)[0].startswith("\u2717 graph: state:")


def test_a_missing_misp_key_is_a_config_error(standins, tmp_path):
    config = write_config(tmp_path, standins)
    (tmp_path / ".env").write_text(f"AZURE_CLIENT_SECRET={standins.client_secret}\n")
    run = run_process(config, "--check")
    assert run.code == ExitCode.CONFIG and "misp_key is empty" in run.out


def test_a_wrong_misp_url_is_not_a_refused_key(standins, tmp_path):
    run = run_process(write_config(tmp_path, standins, misp_domain=standins.misp.url + "/nothere/"), "--check")
    assert run.code == ExitCode.MISP and "refused the API key" not in run.out
    assert "HTTP 404" in run.out and "fix: check misp_domain" in run.out
    config = write_config(tmp_path, standins)
    (tmp_path / ".env").write_text(f"MISP_KEY=wrong\nAZURE_CLIENT_SECRET={standins.client_secret}\n")
    run = run_process(config, "--check")
    assert run.code == ExitCode.MISP and "refused the API key" in run.out


def test_a_misp_502_says_502(standins, tmp_path):
    standins.misp.fail_page(None, "502-html")
    config = write_config(tmp_path, standins)
    for args in ((), ("--check",)):
        run = run_process(config, *args)
        assert run.code == ExitCode.MISP and "502 Bad Gateway" in run.out + run.err, run.out + run.err


def test_an_encrypted_key_without_its_password_or_a_damaged_certificate_is_a_config_error(standins, tmp_path):
    """MSAL only finds these at the token request: a missing password was a bug (exit 5), a wrong
    one "no tenant ... check AZURE_TENANT_ID", a damaged certificate an internal error in --check."""
    certificate = make_client_certificate(passphrase=b"right-password")
    standins.entra.register_certificate(standins.client_id, certificate.certificate_pem)
    path = tmp_path / "client.pem"
    damaged = b"-----BEGIN CERTIFICATE-----\nMIIBjunk\n-----END CERTIFICATE-----\n"
    cases = {"": certificate.certificate_pem, "wrong-password": certificate.certificate_pem,
             "right-password": damaged}
    for password, certificate_pem in cases.items():
        path.write_bytes(certificate.private_key_pem + certificate_pem)
        config = write_config(tmp_path, standins, client_certificate_path=str(path), client_certificate_password=password)
        for args in (("-q",), ("--check",)):
            run = run_process(config, *args)
            assert run.code == ExitCode.CONFIG, (password, args, run.out + run.err)
            assert "client_certificate_path" in run.out + run.err and "tenant" not in run.out + run.err
            if password:
                assert password not in run.out + run.err


def test_a_misp_url_at_another_server_is_not_a_refused_key(standins, tmp_path):
    """misp_domain at a server that answers 401/403 without MISP's "Authentication failed"
    (here Graph's stand-in) was reported as "MISP refused the API key: check MISP_KEY"."""
    config = write_config(tmp_path, standins, misp_domain=standins.graph.url)
    for args in ((), ("--check",)):
        run = run_process(config, *args)
        assert run.code == ExitCode.MISP and "refused the API key" not in run.out + run.err
        assert "misp_domain may point at another server" in run.out + run.err
    assert "fix: check misp_domain" in run.out
