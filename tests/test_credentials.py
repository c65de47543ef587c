"""The three credential kinds each sync end to end: secret (everywhere else), certificate and
managed identity; none of them leaves a secret in logs or output."""
from __future__ import annotations

from constants import ExitCode
from standins import DEFAULT_USER_ASSIGNED_CLIENT_ID, make_client_certificate
from tests.support import active_ids, expected_external_ids, expected_stix_ids, held_external_ids, run_cli, write_config

MANAGED_IDENTITY_VARIABLES = ("IDENTITY_ENDPOINT", "IDENTITY_HEADER", "IDENTITY_SERVER_THUMBPRINT", "MSI_ENDPOINT",
                              "MSI_SECRET", "IMDS_ENDPOINT", "IDENTITY_ENDPOINT")


def test_certificate_credential_syncs_both_targets(standins, tmp_path, capsys):
    certificate = make_client_certificate(passphrase=b"key-password-123")
    standins.entra.register_certificate(standins.client_id, certificate.certificate_pem)
    path = certificate.write(tmp_path)
    config = write_config(tmp_path, standins, target=["graph", "sentinel"], client_certificate_path=path.name)
    (tmp_path / ".env").write_text(f"MISP_KEY={standins.misp.key}\nAZURE_CLIENT_CERTIFICATE_PASSWORD=key-password-123\n")
    run = run_cli(config, capsys=capsys)
    assert run.code == ExitCode.OK, run.err
    assert held_external_ids(standins) == expected_external_ids(standins.misp.events)
    assert active_ids(standins) == expected_stix_ids(standins.misp.events)
    token_requests = [r for r in standins.entra.requests_seen if r.path.endswith("/token")]
    assert token_requests and all(b"client_assertion=" in r.body and b"client_secret" not in r.body for r in token_requests)
    assert "key-password-123" not in run.out + run.err + run.log_text()
    assert "(certificate)" in run_cli(config, "--check", capsys=capsys).out


def test_unregistered_certificate_is_a_clear_token_error(standins, tmp_path, capsys):
    path = make_client_certificate().write(tmp_path)
    config = write_config(tmp_path, standins, client_certificate_path=str(path))
    (tmp_path / ".env").write_text(f"MISP_KEY={standins.misp.key}\n")
    run = run_cli(config, capsys=capsys)
    assert run.code == ExitCode.MICROSOFT and "AADSTS700027" in run.err and run.err.count("\n") == 1


def test_system_assigned_managed_identity_needs_no_secret(standins, tmp_path, capsys, monkeypatch):
    for name in MANAGED_IDENTITY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("IDENTITY_ENDPOINT", standins.identity.endpoint)
    monkeypatch.setenv("IDENTITY_HEADER", standins.identity.header_secret)
    config = write_config(tmp_path, standins, target=["graph", "sentinel"], managed_identity=True,
                          graph_auth={"tenant": "", "client_id": "", "client_secret": ""})
    (tmp_path / ".env").write_text(f"MISP_KEY={standins.misp.key}\n")
    run = run_cli(config, capsys=capsys)
    assert run.code == ExitCode.OK, run.err
    assert held_external_ids(standins) == expected_external_ids(standins.misp.events)
    assert active_ids(standins) == expected_stix_ids(standins.misp.events)
    assert standins.identity.tokens_issued == 2 and not [r for r in standins.entra.requests_seen if r.path.endswith("/token")]
    assert standins.identity.header_secret not in run.log_text()


def test_user_assigned_managed_identity(standins, tmp_path, capsys, monkeypatch):
    for name in MANAGED_IDENTITY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("IDENTITY_ENDPOINT", standins.identity.endpoint)
    monkeypatch.setenv("IDENTITY_HEADER", standins.identity.header_secret)
    config = write_config(tmp_path, standins, managed_identity=DEFAULT_USER_ASSIGNED_CLIENT_ID)
    run = run_cli(config, capsys=capsys)
    assert run.code == ExitCode.OK, run.err
    assert {r.query.get("client_id", [""])[0] for r in standins.identity.requests_seen} == {DEFAULT_USER_ASSIGNED_CLIENT_ID}
    unknown = write_config(tmp_path, standins, managed_identity="12345678-0000-0000-0000-000000000000")
    failed = run_cli(unknown, capsys=capsys)
    assert failed.code == ExitCode.MICROSOFT and "Managed Identity" in failed.err
