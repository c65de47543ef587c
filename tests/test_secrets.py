"""Secrets never leak (issue 10, item 6): not as the start of a cut text, not as an unquoted
number in a config error, not as `user:password@` in a URL; plain-http MISP is refused unless
allowed; an unverified MISP certificate is one warning per run."""
from __future__ import annotations

from constants import ExitCode
from misp_source import _first_line
from ms_client import error_text
from request_log import RequestLog
from settings import load_settings
from sync import policy_from
from tests.support import run_process, write_config

KEY = "Kq8vJ2mZ4tR7wX1yB5nC9dF3gH6jL0pS2uV8aE4i"
TOKEN = "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9." + "x" * 600


def test_a_secret_cut_by_truncation_is_still_redacted(tmp_path):
    log = RequestLog(tmp_path, False, False, (KEY,))
    log.add_secret(TOKEN)
    cut_key = error_text("echo " * 58 + KEY, "HTTP 500")  # 300 characters: the key's first 10
    cut_token = _first_line("Bearer " * 27 + TOKEN)  # 200 characters: the token's first 11
    assert KEY[:8] in cut_key and TOKEN[:8] in cut_token
    for text in (cut_key, cut_token, f"error: {cut_key} (and more)"):
        assert KEY[:8] not in log.scrub(text) and TOKEN[:8] not in log.scrub(text)
    assert log.scrub(f"see {KEY}") == "see [redacted]"


def test_url_credentials_are_redacted_everywhere(standins, tmp_path):
    config = write_config(tmp_path, standins, misp_domain="ftp://operator:Hunter2pw@misp.example/")
    run = run_process(config)
    assert run.code == ExitCode.CONFIG and "Hunter2pw" not in run.err and "[redacted]@" in run.err, run.err
    config = write_config(tmp_path, standins, misp_domain="https://operator:Hunter2pw@127.0.0.1:9/")
    run = run_process(config)
    logs = "".join(path.read_text() for path in run.log_dir.iterdir())
    assert run.code == ExitCode.MISP and "Hunter2pw" not in run.out + run.err + logs, run.err
    run = run_process(config, "--check")
    assert "Hunter2pw" not in run.out + run.err and "[redacted]@127.0.0.1" in run.out


def test_an_unquoted_numeric_key_is_not_echoed(standins, tmp_path):
    config = write_config(tmp_path, standins, misp_key=98765432109876)
    (tmp_path / ".env").write_text(f"AZURE_CLIENT_SECRET={standins.client_secret}\n")
    for args in ((), ("--check",)):
        run = run_process(config, *args)
        assert run.code == ExitCode.CONFIG and "misp_key" in run.out + run.err
        assert "98765432109876" not in run.out + run.err


def test_plain_http_misp_is_refused_unless_allowed(standins, tmp_path):
    plain = standins.misp.url.replace("https://", "http://")
    run = run_process(write_config(tmp_path, standins, misp_domain=plain))
    assert run.code == ExitCode.CONFIG and "misp_allow_plain_http" in run.err and len(run.err.splitlines()) == 1
    run = run_process(write_config(tmp_path, standins, misp_domain=plain, misp_allow_plain_http=True), "--check")
    assert run.code == ExitCode.CONFIG and "\u2717 MISP transport" in run.out and "not TLS" in run.out


def test_unverified_misp_is_one_warning_per_run(standins, tmp_path):
    run = run_process(write_config(tmp_path, standins, misp_verifycert=False))
    assert run.code == ExitCode.OK, run.err
    assert "InsecureRequestWarning" not in run.err
    assert [line for line in run.err.splitlines() if line] == [
        "misp2sentinel: warning: misp_verifycert = False: the MISP server's certificate is not checked"]


def test_the_misp_link_sent_to_microsoft_carries_no_credentials(standins, tmp_path):
    config = write_config(tmp_path, standins, misp_domain="https://operator:Hunter2pw@misp.example/sub/")
    settings = load_settings(config)
    assert policy_from(settings, settings.targets[0]).misp_url == "https://misp.example/sub/"


def test_a_password_with_an_at_sign_and_any_endpoint_setting_are_redacted(standins, tmp_path):
    """urllib3 reads `p@ss` in `user:p@ss@host` as the password: it was cut at the first @ and
    its tail echoed (and sent to Microsoft in the MISP link); endpoint settings echoed it whole."""
    config = write_config(tmp_path, standins, misp_domain="https://operator:Hunter2@pw@misp.example/sub/")
    settings = load_settings(config)
    assert policy_from(settings, settings.targets[0]).misp_url == "https://misp.example/sub/"
    config = write_config(tmp_path, standins, graph_endpoint="http://operator:Hunter2pw@graph.example")
    for args in ((), ("--check",)):
        run = run_process(config, *args)
        assert run.code == ExitCode.CONFIG and "graph_endpoint" in run.out + run.err
        assert "Hunter2" not in run.out + run.err and "[redacted]@graph.example" in run.out + run.err
